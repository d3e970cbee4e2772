// What the studio knows, kept current by REST snapshots and socket events, and who to tell.
// Every merge tolerates order: a snapshot older than an applied event never wins.

import { compareIds } from './live.js';

export const FINAL = new Set(['completed', 'failed', 'canceled']);

export const state = {
  user: null,
  credits: null,
  plan: null,
  subscription: null,
  connection: 'offline',
  avatars: new Map(),
  content: new Map(),
  activity: new Map(),
  ledger: new Map(),
  costs: null,
};

const listeners = new Map();
let creditsVersion = 0;  // bumped by each applied balance event
let lastCreditsEvent = null;
const contentFetches = new Set();
let fetchContent = null;  // set by main: (id) => Promise<content>

export function on(topic, listener) {
  if (!listeners.has(topic)) listeners.set(topic, new Set());
  listeners.get(topic).add(listener);
  return () => listeners.get(topic).delete(listener);
}

export function notify(...topics) {
  for (const topic of topics) {
    for (const listener of [...(listeners.get(topic) || [])]) {
      try {
        listener(state);
      } catch (error) {
        console.error('listener of', topic, error);
      }
    }
  }
}

export function reset() {
  Object.assign(state, { user: null, credits: null, plan: null, subscription: null, costs: null });
  for (const map of [state.avatars, state.content, state.activity, state.ledger]) map.clear();
  creditsVersion = 0;
  lastCreditsEvent = null;
  notify('user', 'credits', 'plan', 'avatars', 'content', 'activity', 'ledger');
}

export function setContentFetcher(fetcher) {
  fetchContent = fetcher;
}

// Snapshots: take the version before the request, apply only if no event came since.
export function creditsMark() {
  return creditsVersion;
}

export function setProfile(profile, mark) {
  if (profile.user) state.user = profile.user;
  if (profile.credits && mark === creditsVersion) state.credits = profile.credits;
  if ('subscription' in profile) state.subscription = profile.subscription;
  if (profile.plan) state.plan = profile.plan;
  notify('user', 'credits', 'plan');
}

const newer = (a, b) => !b || !a.updated_at || !b.updated_at || a.updated_at >= b.updated_at;

export function upsertContent(item, { quiet = false } = {}) {
  const current = state.content.get(item.id);
  if (current && !newer(item, current)) return;
  // A list row or event may lack the live progress fields; keep what we had.
  state.content.set(item.id, { ...current, ...item });
  if (!quiet) notify('content');
}

export function removeContent(id) {
  state.content.delete(id);
  notify('content');
}

export function upsertAvatar(avatar, { quiet = false } = {}) {
  const current = state.avatars.get(avatar.id);
  if (current && !newer(avatar, current)) return;
  state.avatars.set(avatar.id, avatar);
  if (!quiet) notify('avatars');
}

export function removeAvatar(id) {
  state.avatars.delete(id);
  notify('avatars');
}

export function addActivity(item, { quiet = false } = {}) {
  state.activity.set(item.id, item);
  if (!quiet) notify('activity');
}

export function addLedgerRow(row, { quiet = false } = {}) {
  const known = Object.fromEntries(Object.entries(row).filter(([, value]) => value !== null && value !== undefined));
  state.ledger.set(row.id, { ...state.ledger.get(row.id), ...known });
  if (!quiet) notify('ledger');
}

// "2026-11-26T06:00:00.5Z" -> "2026-11-26T06:00:00.500000": comparable as text, to the microsecond.
function timeKey(iso) {
  const match = /^(.{19})(?:\.(\d+))?/.exec(iso || '');
  return match ? `${match[1]}.${(match[2] || '').padEnd(6, '0')}` : '';
}

// Newest first, ties by id descending: the order of the API's lists.
export function sortedByNewest(items) {
  return [...items].map((item) => [timeKey(item.created_at), String(item.id), item])
    .sort((a, b) => (a[0] === b[0] ? (a[1] < b[1] ? 1 : -1) : (a[0] < b[0] ? 1 : -1)))
    .map(([, , item]) => item);
}

function refetch(id) {
  if (!fetchContent || contentFetches.has(id)) return;
  contentFetches.add(id);
  fetchContent(id).then((item) => upsertContent(item), () => {}).finally(() => contentFetches.delete(id));
}

// A server -> client event, after the live layer dropped duplicates.
export function applyEvent(name, payload) {
  switch (name) {
    case 'generation.progress': {
      const item = state.content.get(payload.content_id);
      if (!item) {
        refetch(payload.content_id);  // made elsewhere (another tab, the API)
        return;
      }
      if (FINAL.has(item.status)) return;
      if (payload.status === 'queued' && item.status === 'processing') return;  // an old tick
      const patch = { progress: Math.max(item.status === payload.status ? item.progress || 0 : 0, payload.progress) };
      if (payload.stage !== undefined) patch.stage = payload.stage;
      if (payload.status === 'completed') patch.progress = 100;  // the completed event brings the rest
      else patch.status = payload.status;
      state.content.set(item.id, { ...item, ...patch });
      notify('content');
      if (payload.status === 'canceled' || payload.status === 'failed') refetch(item.id);
      return;
    }
    case 'generation.completed':
      upsertContent(payload.content);
      notify('content-done');
      return;
    case 'generation.failed': {
      const item = state.content.get(payload.content_id);
      if (item && !FINAL.has(item.status)) {
        state.content.set(item.id, { ...item, status: 'failed', error: payload.error });
        notify('content');
      }
      refetch(payload.content_id);  // its final row (and a retry may have overtaken this event)
      return;
    }
    case 'credits.updated':
      if (lastCreditsEvent === null || compareIds(payload.event_id, lastCreditsEvent) !== -1) {
        lastCreditsEvent = payload.event_id;
        creditsVersion += 1;
        state.credits = { ...(state.credits || {}), balance: payload.balance };
        notify('credits');
      }
      if (payload.transaction_id && !state.ledger.has(payload.transaction_id)) {
        addLedgerRow({ id: payload.transaction_id, amount: payload.delta, balance_after: payload.balance,
          reason: payload.reason, created_at: payload.ts });
      }
      return;
    case 'avatar.updated':
      upsertAvatar(payload.avatar);
      return;
    case 'subscription.updated':
      state.subscription = payload.subscription;
      if (payload.plan) state.plan = payload.plan;
      notify('plan');
      return;
    case 'activity':
      addActivity(payload.activity);
      return;
    default:
      // An event this studio does not know yet: its id still counted for order and replay.
  }
}
