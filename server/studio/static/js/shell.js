// The header (navigation, live balance, plan, connection state) and the account banner.

import { post } from './api.js';
import { busy, h, replace, toast } from './dom.js';
import * as session from './session.js';
import { state } from './state.js';

const NAV = [['/dashboard', 'Dashboard'], ['/generate', 'Generate'], ['/gallery', 'Gallery'],
  ['/avatars', 'Avatars'], ['/activity', 'Activity'], ['/plans', 'Plans']];
const GUEST_NAV = [['/sign-in', 'Sign in'], ['/sign-up', 'Create account']];
const CONNECTION = {
  live: 'Live', connecting: 'Connecting…', reconnecting: 'Reconnecting…', offline: 'Offline',
};

let built = null;

function build(mode) {
  const links = (mode === 'user' ? NAV : GUEST_NAV).map(([href, text]) => h('a', { href }, text));
  const nav = h('nav', { 'aria-label': 'Studio' }, h('ul', {}, links.map((a) => h('li', {}, a))));
  const parts = { mode, links };
  const brand = h('a', { class: 'brand', href: '/' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }, 'L'),
    'Lustify Studio');
  if (mode === 'user') {
    parts.balance = h('strong', { 'data-testid': 'balance' }, '…');
    parts.plan = h('a', { class: 'plan-badge', href: '/plans', 'data-testid': 'plan' }, '…');
    parts.connection = h('span', { class: 'connection', role: 'status', 'data-testid': 'connection' });
    const signOut = h('button', { type: 'button', class: 'secondary small', on: {
      click: () => busy(signOut, () => session.signOut(), 'Signing out…'),
    } }, 'Sign out');
    const status = h('div', { class: 'status' },
      h('p', { class: 'balance', 'aria-live': 'polite' }, h('span', { class: 'label' }, 'Balance '), parts.balance,
        ' credits'),
      parts.plan, parts.connection, signOut);
    replace(document.getElementById('top'), h('div', { class: 'top-inner' }, brand, nav, status));
  } else {
    replace(document.getElementById('top'), h('div', { class: 'top-inner' }, brand, nav,
      h('div', { class: 'status' }, h('a', { href: '/docs', class: 'docs-link' }, 'API docs'))));
  }
  return parts;
}

export function renderHeader() {
  const mode = session.token() ? 'user' : 'guest';
  if (!built || built.mode !== mode) built = build(mode);
  for (const link of built.links) {
    if (new URL(link.href).pathname === window.location.pathname) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (mode !== 'user') return;
  const balance = state.credits ? String(state.credits.balance) : '…';
  if (built.balance.textContent !== balance) built.balance.textContent = balance;
  const plan = state.plan ? `${state.plan.name} plan` : '…';
  if (built.plan.textContent !== plan) built.plan.textContent = plan;
  built.connection.dataset.state = state.connection;
  const label = CONNECTION[state.connection] || state.connection;
  if (built.connection.textContent !== label) {
    replace(built.connection, h('span', { class: 'dot', 'aria-hidden': 'true' }), label);
  }
}

export function renderBanner() {
  const host = document.getElementById('banner');
  const user = state.user;
  if (!session.token() || !user || user.email_verified) {
    if (host.firstChild) replace(host);
    delete host.dataset.for;
    return;
  }
  if (host.dataset.for === user.id) return;
  host.dataset.for = user.id;
  const resend = h('button', { type: 'button', class: 'secondary small', on: {
    click: () => busy(resend, async () => {
      try {
        await post('/api/auth/resend-verification');
        toast('A new verification link is on its way.');
      } catch (error) {
        toast(error.message, 'error');
      }
    }, 'Sending…'),
  } }, 'Send the link again');
  replace(host, h('div', { class: 'banner', role: 'region', 'aria-label': 'Account notice' },
    h('p', {}, 'Verify your email address to create avatars and generate content. We sent you a link. '),
    resend));
}
