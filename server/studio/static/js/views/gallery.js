// The gallery: every image and playable video, filtered by type, status and avatar, live.

import { get, query } from '../api.js';
import { errorBox, field, h, loadingBox, reconcile, replace } from '../dom.js';
import { on, sortedByNewest, state, upsertAvatar, upsertContent } from '../state.js';
import { contentCard } from './content-card.js';

const PAGE = 24;

function select(name, options) {
  return h('select', { name }, options.map(([value, text]) => h('option', { value }, text)));
}

export function view() {
  const type = select('type', [['', 'Images and videos'], ['image', 'Images'], ['video', 'Videos']]);
  const status = select('status', [['', 'Any status'], ['completed', 'Done'], ['processing', 'Generating'],
    ['queued', 'Queued'], ['failed', 'Failed'], ['canceled', 'Canceled']]);
  const avatar = select('avatar_id', [['', 'Any avatar']]);
  const grid = h('div', { class: 'grid', 'data-testid': 'gallery' }, loadingBox());
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Show more');
  const count = h('p', { class: 'hint', 'aria-live': 'polite' });
  let pages = 1;
  let total = 0;
  let loaded = false;
  let shownIds = new Set();  // what the server listed for these filters (plus live additions)

  const filters = () => ({ type: type.value, status: status.value, avatar_id: avatar.value });
  const matches = (c) => {
    const f = filters();
    return (!f.type || c.type === f.type) && (!f.status || c.status === f.status)
      && (!f.avatar_id || c.avatar_id === f.avatar_id);
  };
  const show = () => {
    if (!loaded) return;
    // New items that match appear live; listed items leave when they stop matching.
    for (const c of state.content.values()) if (matches(c)) shownIds.add(c.id);
    const items = sortedByNewest([...shownIds].map((id) => state.content.get(id)).filter((c) => c && matches(c)));
    replace(count, `${items.length} shown${total > items.length ? ` of ${total}` : ''}.`);
    if (!items.length) {
      replace(grid, h('p', { class: 'empty' }, 'Nothing here yet: generate something, or change the filters.'));
      return;
    }
    if (grid.querySelector('.empty, .loading, .error-box')) replace(grid);
    reconcile(grid, items, (c) => c.id, contentCard);
  };
  const load = async (reset = true) => {
    if (reset) {
      pages = 1;
      shownIds = new Set();
      loaded = false;
      replace(grid, loadingBox());
    }
    grid.setAttribute('aria-busy', 'true');
    try {
      const page = await get(`/api/content${query({ ...filters(), page: pages, limit: PAGE })}`);
      for (const c of page.items) {
        upsertContent(c, { quiet: true });
        shownIds.add(c.id);
      }
      total = page.total;
      more.hidden = pages * PAGE >= total;
      loaded = true;
      show();
    } catch (error) {
      replace(grid, errorBox(error, () => load(reset)));
    } finally {
      grid.removeAttribute('aria-busy');
    }
  };
  const showAvatars = () => {
    const chosen = avatar.value;
    replace(avatar, h('option', { value: '' }, 'Any avatar'),
      sortedByNewest(state.avatars.values()).map((a) => h('option', { value: a.id, selected: a.id === chosen }, a.name)));
  };
  for (const control of [type, status, avatar]) control.addEventListener('change', () => load());
  more.addEventListener('click', () => {
    pages += 1;
    load(false);
  });
  get('/api/avatars?limit=100').then((page) => {
    for (const a of page.items) upsertAvatar(a, { quiet: true });
    showAvatars();
  }, () => {});
  const offs = [on('content', show), on('avatars', showAvatars), on('sync', () => load())];
  showAvatars();
  load();
  return {
    el: h('div', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', {}, 'Gallery'), count),
      h('form', { class: 'filters panel', 'aria-label': 'Filters', on: { submit: (e) => e.preventDefault() } },
        field('Type', type), field('Status', status), field('Avatar', avatar)),
      grid, h('p', { class: 'actions center' }, more)),
    destroy: () => offs.forEach((off) => off()),
  };
}
