// The activity feed and the credit ledger, both live.

import { get, query } from '../api.js';
import { errorBox, h, loadingBox, reconcile, replace } from '../dom.js';
import { ago, shortWhen, signed, when } from '../format.js';
import { addActivity, addLedgerRow, on, sortedByNewest, state } from '../state.js';

const PAGE = 20;

export function activityItem(item) {
  const el = h('li', { class: 'activity-item', dataset: { type: item.type } },
    h('p', { class: 'message' }, item.message),
    h('p', { class: 'meta' }, h('time', { datetime: item.created_at, title: when(item.created_at) }, ago(item.created_at)),
      ` · ${item.type}`));
  return el;
}

function ledgerRow(row) {
  const el = h('tr', {});
  el.update = (r) => replace(el,
    h('td', { class: 'nowrap' }, h('time', { datetime: r.created_at }, shortWhen(r.created_at))),
    h('td', { class: 'num' }, signed(r.amount)),
    h('td', { class: 'num' }, String(r.balance_after)),
    h('td', { class: 'nowrap' }, r.type || ''),
    h('td', {}, r.reason || ''));
  el.update(row);
  return el;
}

// A list section that loads pages from `path` into the state, shown newest first.
function pagedSection({ path, add, items, container, render, empty }) {
  const more = h('button', { type: 'button', class: 'secondary', hidden: true }, 'Show more');
  let page = 0;
  let loaded = false;
  const show = () => {
    if (!loaded) return;
    const rows = sortedByNewest(items());
    if (!rows.length) {
      replace(container, h(container.tagName === 'TBODY' ? 'tr' : 'li', {},
        container.tagName === 'TBODY' ? h('td', { colspan: 5 }, empty) : empty));
      return;
    }
    if (!container.querySelector('[data-key]')) replace(container);
    reconcile(container, rows, (r) => r.id, render);
  };
  const load = async (reset) => {
    if (reset) page = 0;
    page += 1;
    try {
      const data = await get(`${path}${query({ page, limit: PAGE })}`);
      for (const row of data.items) add(row, { quiet: true });
      more.hidden = page * PAGE >= data.total;
      loaded = true;
      show();
    } catch (error) {
      page -= 1;
      const box = errorBox(error, () => load(reset));
      replace(container, container.tagName === 'TBODY' ? h('tr', {}, h('td', { colspan: 5 }, box)) : h('li', {}, box));
    }
  };
  more.addEventListener('click', () => load(false));
  return { more, show, load };
}

export function view() {
  const feed = h('ol', { class: 'activity', 'data-testid': 'activity-feed', 'aria-live': 'polite' }, h('li', {}, loadingBox()));
  const ledgerBody = h('tbody', { 'data-testid': 'ledger' }, h('tr', {}, h('td', { colspan: 5 }, loadingBox())));
  const feedSection = pagedSection({ path: '/api/dashboard/activity', add: addActivity,
    items: () => state.activity.values(), container: feed, render: activityItem, empty: 'No activity yet.' });
  const ledgerSection = pagedSection({ path: '/api/credits/transactions', add: addLedgerRow,
    items: () => state.ledger.values(), container: ledgerBody, render: ledgerRow, empty: 'No credit movements yet.' });
  // A row from a live event lacks its type: the ledger page has it.
  const asked = new Set();
  let timer = null;
  const fillTypes = () => {
    const missing = [...state.ledger.values()].filter((r) => !r.type && !asked.has(r.id));
    if (!missing.length) return;
    clearTimeout(timer);
    timer = setTimeout(() => {
      for (const row of missing) asked.add(row.id);
      get(`/api/credits/transactions${query({ limit: PAGE })}`).then((data) => {
        for (const row of data.items) addLedgerRow(row);
      }, () => {});
    }, 300);
  };
  const offs = [on('activity', feedSection.show), on('ledger', () => { ledgerSection.show(); fillTypes(); }),
    on('sync', () => { feedSection.load(true); ledgerSection.load(true); })];
  feedSection.load(true);
  ledgerSection.load(true);
  return {
    el: h('div', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', {}, 'Activity')),
      h('div', { class: 'two-col wide-right' },
        h('section', { class: 'panel', 'aria-labelledby': 'feed-title' },
          h('h2', { id: 'feed-title' }, 'What happened'), feed, h('p', { class: 'actions center' }, feedSection.more)),
        h('section', { class: 'panel', 'aria-labelledby': 'ledger-title' },
          h('h2', { id: 'ledger-title' }, 'Credit ledger'),
          h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-labelledby': 'ledger-title' },
            h('table', {},
              h('thead', {}, h('tr', {}, ['When', 'Amount', 'Balance after', 'Type', 'Reason']
                .map((t) => h('th', { scope: 'col' }, t)))),
              ledgerBody)),
          h('p', { class: 'actions center' }, ledgerSection.more)))),
    destroy: () => {
      clearTimeout(timer);
      offs.forEach((off) => off());
    },
  };
}
