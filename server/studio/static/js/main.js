// The studio's entry: routes, the signed-in session and its live connection.

import { api, get, query } from './api.js';
import { replace, toast } from './dom.js';
import { Live } from './live.js';
import * as session from './session.js';
import { applyEvent, creditsMark, notify, on, reset, setContentFetcher, setProfile, state, upsertAvatar,
  upsertContent } from './state.js';
import { renderBanner, renderHeader } from './shell.js';
import * as activity from './views/activity.js';
import * as auth from './views/auth.js';
import { setCanceler } from './views/content-card.js';
import * as avatars from './views/avatars.js';
import * as dashboard from './views/dashboard.js';
import * as gallery from './views/gallery.js';
import * as generate from './views/generate.js';
import * as plans from './views/plans.js';

const ROUTES = {
  '/sign-up': { view: auth.signUp, title: 'Create your account', guest: true },
  '/check-email': { view: auth.checkEmail, title: 'Check your email' },
  '/verify-email': { view: auth.verifyEmail, title: 'Verify your email' },
  '/sign-in': { view: auth.signIn, title: 'Sign in', guest: true },
  '/forgot-password': { view: auth.forgotPassword, title: 'Forgot your password?' },
  '/reset-password': { view: auth.resetPassword, title: 'Choose a new password' },
  '/dashboard': { view: dashboard.view, title: 'Dashboard', signedIn: true },
  '/plans': { view: plans.view, title: 'Plans and credits', signedIn: true },
  '/avatars': { view: avatars.view, title: 'Avatars', signedIn: true },
  '/generate': { view: generate.view, title: 'Generate', signedIn: true },
  '/gallery': { view: gallery.view, title: 'Gallery', signedIn: true },
  '/activity': { view: activity.view, title: 'Activity', signedIn: true },
};

const live = new Live({
  onEvent: (name, payload) => {
    applyEvent(name, payload);
    if (name === 'activity' && payload.activity && payload.activity.type === 'account.verified') {
      loadProfile().catch(() => {});
    }
    notify(`event:${name}`);
  },
  onState: (connection) => {
    state.connection = connection;
    notify('connection');
  },
  onSync: ({ resumed }) => sync(resumed),
});

let current = null;  // {path, view}
let afterSignIn = null;

const ctx = {
  live,
  navigate,
  signedIn: (payload) => startSession(payload),
  get afterSignIn() { return afterSignIn; },
};

export function navigate(path, { replace: replaceEntry = false, data = null } = {}) {
  const method = replaceEntry ? 'replaceState' : 'pushState';
  window.history[method](data, '', path);
  render();
}

function render() {
  const path = window.location.pathname.replace(/\/+$/, '') || '/';
  const signedIn = Boolean(session.token());
  let route = ROUTES[path];
  if (!route) {
    window.history.replaceState(null, '', signedIn ? '/dashboard' : '/sign-in');
    return render();
  }
  if (route.signedIn && !signedIn) {
    afterSignIn = path;
    window.history.replaceState({ notice: 'Sign in to continue.' }, '', '/sign-in');
    route = ROUTES['/sign-in'];
  } else if (route.guest && signedIn) {
    window.history.replaceState(null, '', '/dashboard');
    route = ROUTES['/dashboard'];
  }
  if (current && current.view.destroy) current.view.destroy();
  const main = document.getElementById('main');
  const view = route.view({ ...ctx, data: window.history.state || {} });
  current = { path: window.location.pathname, view };
  replace(main, view.el);
  document.title = `${route.title} · Lustify Studio`;
  renderHeader(ctx);
  // A new screen starts at the top, and screen readers hear its heading.
  window.scrollTo(0, 0);
  const heading = main.querySelector('h1');
  if (heading && document.readyState === 'complete') {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

// Same-origin links to studio pages change the screen without loading the page.
document.addEventListener('click', (event) => {
  const link = event.target instanceof Element ? event.target.closest('a[href]') : null;
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey
      || event.shiftKey || event.altKey || link.target || link.hasAttribute('download')) return;
  const url = new URL(link.href);
  if (url.origin !== window.location.origin || !ROUTES[url.pathname]) return;
  event.preventDefault();
  navigate(url.pathname + url.search + url.hash);
});
window.addEventListener('popstate', render);

async function loadProfile() {
  const mark = creditsMark();
  setProfile(await get('/api/auth/profile'), mark);
}

setContentFetcher((id) => get(`/api/content/${encodeURIComponent(id)}`));
setCanceler((id) => (live.connected ? live.action('content.cancel', { content_id: id })
  : api('POST', `/api/content/${encodeURIComponent(id)}/cancel`)));

// After each (re)connect. Resumed: the server replays missed durable events, so only the
// ephemeral progress of running items needs a look. Otherwise: reload what the studio shows.
async function sync(resumed) {
  try {
    const jobs = [loadProfile()];
    for (const status of ['queued', 'processing']) {
      jobs.push(get(`/api/content${query({ status, limit: 100 })}`).then((page) => {
        for (const item of page.items) upsertContent(item, { quiet: true });
      }));
    }
    if (!resumed) {
      jobs.push(get('/api/avatars?limit=100').then((page) => {
        for (const avatar of page.items) upsertAvatar(avatar, { quiet: true });
      }));
    }
    await Promise.all(jobs);
    // Items the studio shows as running but the server no longer does (finished while away).
    const active = [...state.content.values()].filter((c) => c.status === 'queued' || c.status === 'processing');
    await Promise.all(active.map((c) => get(`/api/content/${c.id}`).then((item) => upsertContent(item, { quiet: true }))
      .catch(() => {})));
    notify('content', 'avatars');
    if (!resumed) notify('sync');
  } catch (error) {
    if (session.hasSession()) toast(error.message, 'error');
  }
}

function startSession(payload) {
  session.begin(payload);
  state.user = payload.user || state.user;
  live.start();
  loadProfile().catch(() => {});
}

session.onSessionChange((kind, detail) => {
  if (kind === 'tokens') {
    if (detail) state.user = detail;
    live.reauthenticate();
  } else if (kind === 'ended') {
    live.stop();
    reset();
    const notice = {
      revoked: 'Your session ended (signed out elsewhere or the password changed). Please sign in again.',
      expired: 'Your session expired. Please sign in again.',
      signed_out: 'You are signed out.',
    }[detail] || 'Please sign in.';
    afterSignIn = null;
    navigate('/sign-in', { replace: true, data: { notice } });
  }
});

for (const topic of ['user', 'credits', 'plan', 'connection']) {
  on(topic, () => {
    renderHeader(ctx);
    renderBanner();
  });
}

async function boot() {
  if (session.hasSession()) {
    try {
      await session.refresh();
    } catch { /* expired (back to sign-in) or offline (retried by the session) */ }
  }
  if (session.token()) {
    live.start();
    loadProfile().catch((error) => toast(error.message, 'error'));
  }
  render();
  renderBanner();
}

// What the live layer did, for the browser tests and the curious (no tokens in here).
window.lustifyStudio = Object.freeze({
  live: () => ({ ...live.stats, lastEventId: live.lastId, connection: state.connection }),
});
boot();
