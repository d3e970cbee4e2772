// The dashboard: balance, plan, counts, the 7/30/90-day analytics chart, limits and warnings.

import { get, query } from '../api.js';
import { errorBox, h, loadingBox, replace, svg } from '../dom.js';
import { credits, day } from '../format.js';
import { on, state } from '../state.js';
import { activityItem } from './activity.js';

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const TIMEFRAMES = [['7d', '7 days'], ['30d', '30 days'], ['90d', '90 days']];

// Bars of credits spent per day, with the numbers as an SVG title per bar and as a table.
// `width`: the space it has, so the labels keep their size on a phone.
function chart(analytics, width) {
  const series = analytics.series || [];
  const height = 220;
  const pad = { top: 12, right: 8, bottom: 28, left: 40 };
  const max = Math.max(1, ...series.map((d) => d.credits_spent));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const step = plotW / Math.max(1, series.length);
  const barW = Math.max(2, step * 0.7);
  const ticks = [0, Math.round(max / 2), max];
  const labelEvery = Math.ceil(series.length / Math.max(2, Math.floor(plotW / 64)));
  const graphic = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img',
    'aria-labelledby': 'chart-title chart-summary' },
  ticks.map((t) => {
    const y = pad.top + plotH - (t / max) * plotH;
    return [svg('line', { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: 'grid-line' }),
      svg('text', { x: pad.left - 6, y: y + 4, 'text-anchor': 'end', class: 'axis' }, String(t))];
  }),
  series.map((d, i) => {
    const h2 = (d.credits_spent / max) * plotH;
    const x = pad.left + i * step + (step - barW) / 2;
    return svg('g', {},
      svg('rect', { x, y: pad.top + plotH - h2, width: barW, height: Math.max(h2, d.credits_spent ? 1 : 0), class: 'bar' },
        svg('title', {}, `${day(d.date)}: ${credits(d.credits_spent)}, ${d.images} images, ${d.videos} videos, ${d.failed} failed`)),
      i % labelEvery === 0 ? svg('text', { x: x + barW / 2, y: height - 8, 'text-anchor': 'middle', class: 'axis' },
        day(d.date)) : null);
  }));
  const t = analytics.totals || {};
  const summary = `${credits(t.credits_spent || 0)} spent, ${plural(t.images || 0, 'image')}, `
    + `${plural(t.videos || 0, 'video')}, ${t.failed || 0} failed in the last ${{ '7d': '7 days', '30d': '30 days', '90d': '90 days' }[analytics.timeframe] || analytics.timeframe}.`;
  return h('figure', { class: 'chart-figure' },
    h('figcaption', {}, h('span', { id: 'chart-title' }, 'Credits spent per day. '),
      h('span', { id: 'chart-summary', 'data-testid': 'analytics-summary' }, summary)),
    h('div', { class: 'chart-box' }, graphic),
    h('details', {}, h('summary', {}, 'Show the numbers'),
      h('div', { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': 'Analytics numbers' },
        h('table', {}, h('thead', {}, h('tr', {}, ['Day', 'Credits spent', 'Images', 'Videos', 'Failed']
          .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, series.map((d) => h('tr', {}, h('th', { scope: 'row' }, day(d.date)),
          [d.credits_spent, d.images, d.videos, d.failed].map((v) => h('td', { class: 'num' }, String(v))))))))));
}

function stat(label, value, testid) {
  return h('div', { class: 'stat' }, h('p', { class: 'stat-label' }, label),
    h('p', { class: 'stat-value', 'data-testid': testid }, value));
}

export function view() {
  const stats = h('div', { class: 'stats', 'aria-live': 'polite' }, loadingBox());
  const limits = h('div', { 'data-testid': 'limits' }, loadingBox());
  const chartBox = h('div', { class: 'chart-area' }, loadingBox());
  const recent = h('ol', { class: 'activity' });
  let timeframe = '7d';
  const choices = h('div', { class: 'segmented', role: 'radiogroup', 'aria-label': 'Time frame' },
    TIMEFRAMES.map(([value, text]) => {
      const id = `tf-${value}`;
      const radio = h('input', { type: 'radio', name: 'timeframe', id, value, checked: value === timeframe });
      radio.addEventListener('change', () => {
        timeframe = value;
        loadChart();
      });
      return [radio, h('label', { for: id }, text)];
    }));

  const renderDashboard = (d) => {
    replace(stats,
      stat('Balance', credits(state.credits ? state.credits.balance : d.credits.balance), 'dash-balance'),
      stat('Plan', h('a', { href: '/plans' }, d.plan ? d.plan.name : 'Free'), 'dash-plan'),
      stat('Avatars', `${d.limits.avatars.used} of ${d.limits.avatars.limit}`, 'dash-avatars'),
      stat('Images', String(d.counts.images), 'dash-images'),
      stat('Videos', String(d.counts.videos), 'dash-videos'),
      stat('Generating', String(d.counts.in_progress), 'dash-running'));
    const l = d.limits;
    const warnings = l.warnings || [];
    replace(limits,
      h('dl', { class: 'limits' },
        h('dt', {}, 'Avatars'), h('dd', {}, h('meter', { min: 0, max: l.avatars.limit, value: l.avatars.used,
          'aria-label': 'Avatars used' }), ` ${l.avatars.used} of ${l.avatars.limit} (${l.avatars.remaining} left)`),
        h('dt', {}, 'Credits'), h('dd', {}, `${credits(l.credits.balance)} of a ${credits(l.credits.plan_allowance)} monthly allowance`)),
      warnings.length
        ? h('ul', { class: 'warnings' }, warnings.map((w) => h('li', { class: 'warning-item', dataset: { code: w.code } }, w.message)))
        : h('p', { class: 'hint' }, 'No warnings: you are well within your plan.'));
    const items = d.recent_activity || [];
    replace(recent, items.length ? items.slice(0, 6).map(activityItem) : h('li', {}, 'No activity yet.'));
  };
  const load = async () => {
    try {
      renderDashboard(await get('/api/dashboard'));
    } catch (error) {
      replace(stats, errorBox(error, load));
      replace(limits);
    }
  };
  let analytics = null;
  const drawChart = () => {
    if (analytics) replace(chartBox, chart(analytics, Math.max(300, chartBox.clientWidth)));
  };
  const loadChart = async () => {
    chartBox.setAttribute('aria-busy', 'true');
    try {
      analytics = await get(`/api/dashboard/analytics${query({ timeframe })}`);
      drawChart();
    } catch (error) {
      replace(chartBox, errorBox(error, loadChart));
    } finally {
      chartBox.removeAttribute('aria-busy');
    }
  };
  // Live: refresh the figures shortly after anything they count changes.
  let timer = null;
  const soon = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      load();
      loadChart();
    }, 600);
  };
  const offs = ['event:generation.completed', 'event:generation.failed', 'event:credits.updated', 'event:avatar.updated',
    'event:subscription.updated', 'event:activity', 'sync'].map((topic) => on(topic, soon));
  let resizeTimer = null;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(drawChart, 150);
  };
  window.addEventListener('resize', onResize);
  load();
  loadChart();
  const name = state.user && (state.user.display_name || state.user.email);
  return {
    el: h('div', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', {}, 'Dashboard'), name ? h('p', { class: 'hint' }, `Welcome back, ${name}.`) : null),
      stats,
      h('div', { class: 'two-col wide-left' },
        h('section', { class: 'panel', 'aria-labelledby': 'analytics-title' },
          h('div', { class: 'section-head' }, h('h2', { id: 'analytics-title' }, 'Analytics'), choices), chartBox),
        h('div', { class: 'stack' },
          h('section', { class: 'panel', 'aria-labelledby': 'limits-title' },
            h('h2', { id: 'limits-title' }, 'Plan limits'), limits),
          h('section', { class: 'panel', 'aria-labelledby': 'recent-title' },
            h('h2', { id: 'recent-title' }, 'Recent activity'), recent,
            h('p', {}, h('a', { href: '/activity' }, 'All activity')))))),
    destroy: () => {
      clearTimeout(timer);
      window.removeEventListener('resize', onResize);
      offs.forEach((off) => off());
    },
  };
}
