// The REST API with the session's access token: refreshed first when it is about to
// expire, once more on `token_expired`; a revoked session ends here.

import { send } from './http.js';
import * as session from './session.js';

export async function api(method, path, { body, idempotencyKey, auth = true } = {}) {
  const headers = idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : {};
  if (!auth) return send(method, path, { body, headers });
  if (session.expiringSoon()) await session.refresh();
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await send(method, path, { body, headers, token: session.token() });
    } catch (error) {
      if (error.status !== 401 || error.code === 'invalid_credentials') throw error;
      if (error.code === 'token_expired' && attempt === 0) {
        await session.refresh();
        continue;
      }
      session.end(error.code === 'token_revoked' ? 'revoked' : 'expired');
      throw error;
    }
  }
}

export const get = (path) => api('GET', path);
export const post = (path, body, options = {}) => api('POST', path, { body, ...options });
export const put = (path, body) => api('PUT', path, { body });
export const del = (path) => api('DELETE', path);

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}
