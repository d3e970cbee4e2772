// The signed-in session: the access token in memory only, the refresh token in this tab's
// sessionStorage (see the studio README for why, and what that costs), refreshed before
// the access token expires. The server rotates the refresh token on every use.

import { ApiError, send } from './http.js';

const STORE_KEY = 'lustify.refresh_token';
const listeners = new Set();
let accessToken = null;
let expiresAt = 0;
let timer = null;
let inflight = null;
let failures = 0;

function stored() {
  try {
    return sessionStorage.getItem(STORE_KEY);
  } catch {
    return null;
  }
}

function store(value) {
  try {
    if (value) sessionStorage.setItem(STORE_KEY, value);
    else sessionStorage.removeItem(STORE_KEY);
  } catch { /* storage disabled: the session lasts as long as the page */ }
}

export function onSessionChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function emit(kind, detail) {
  for (const listener of [...listeners]) listener(kind, detail);
}

export function hasSession() {
  return Boolean(accessToken || stored());
}

export function token() {
  return accessToken;
}

export function expiringSoon(marginMs = 5000) {
  return !accessToken || Date.now() > expiresAt - marginMs;
}

// Tokens from login or refresh: {access_token, refresh_token, expires_in, user?}.
export function begin(payload) {
  accessToken = payload.access_token;
  expiresAt = Date.now() + payload.expires_in * 1000;
  store(payload.refresh_token);
  failures = 0;
  schedule(payload.expires_in * 1000 - Math.min(60_000, (payload.expires_in * 1000) / 4));
  emit('tokens', payload.user || null);
}

function schedule(delayMs) {
  clearTimeout(timer);
  timer = setTimeout(() => refresh().catch(() => {}), Math.max(1000, delayMs));
}

// One refresh at a time: every caller waits for the same rotation.
export function refresh() {
  if (!inflight) inflight = rotate().finally(() => { inflight = null; });
  return inflight;
}

async function rotate() {
  const refreshToken = stored();
  if (!refreshToken) {
    end('expired');
    throw new ApiError(401, 'unauthorized', 'Please sign in.');
  }
  try {
    begin(await send('POST', '/api/auth/refresh', { body: { refresh_token: refreshToken } }));
  } catch (error) {
    if (error.status === 401 || error.status === 400) {
      end(error.code === 'token_revoked' ? 'revoked' : 'expired');
    } else {
      failures += 1;  // offline or a server hiccup: the refresh token still stands, try again
      schedule(Math.min(30_000, 1000 * 2 ** failures));
    }
    throw error;
  }
}

export function end(reason) {
  const had = hasSession();
  clearTimeout(timer);
  accessToken = null;
  expiresAt = 0;
  store(null);
  if (had) emit('ended', reason);
}

export async function signOut() {
  const refreshToken = stored();
  try {
    if (refreshToken) {
      await send('POST', '/api/auth/logout', { body: { refresh_token: refreshToken }, token: accessToken });
    }
  } catch { /* signed out here either way */ }
  end('signed_out');
}

// A tab that slept through its timer refreshes as soon as it is looked at again.
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && stored() && expiringSoon(60_000)) refresh().catch(() => {});
});
