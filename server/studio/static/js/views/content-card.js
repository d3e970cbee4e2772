// One generated image or video: live progress while it runs, the result when done, and
// cancel / retry / delete. Shared by Generate and the Gallery.

import { api } from '../api.js';
import { busy, h, replace, toast } from '../dom.js';
import { credits, titleCase, when } from '../format.js';
import { uuid4 } from '../http.js';
import { removeContent, state, upsertContent } from '../state.js';

const STATUS_TEXT = { queued: 'Queued', processing: 'Generating', completed: 'Done', failed: 'Failed',
  canceled: 'Canceled' };
const QUALITY = { standard: 'Standard', hd: 'HD', premium: 'Premium' };

export const isActive = (item) => item.status === 'queued' || item.status === 'processing';

function media(item) {
  const label = `${titleCase(item.type)}: ${item.prompt}`;
  if (item.status === 'completed' && item.url) {
    if (item.type === 'video') {
      return h('video', { src: item.url, poster: item.thumbnail_url || undefined, controls: true, preload: 'metadata',
        playsinline: true, 'aria-label': label });
    }
    return h('a', { href: item.url, target: '_blank', rel: 'noopener', class: 'media-link' },
      h('img', { src: item.url, alt: label, loading: 'lazy' }));
  }
  return h('div', { class: `placeholder status-${item.status}`, role: 'img', 'aria-label': STATUS_TEXT[item.status] },
    isActive(item) ? h('span', { class: 'spinner', 'aria-hidden': 'true' }) : h('span', {}, STATUS_TEXT[item.status]));
}

export function contentCard(item) {
  const el = h('article', { class: 'card content-card', 'aria-labelledby': `content-${item.id}` });
  const mediaBox = h('div', { class: 'media' });
  const status = h('p', { class: 'status' });
  const details = h('p', { class: 'meta' });
  const progress = h('progress', { max: 100, 'aria-labelledby': `content-${item.id}` });
  const progressText = h('span', { class: 'progress-text' });
  const progressRow = h('div', { class: 'progress-row', 'data-testid': 'progress' }, progress, progressText);
  const error = h('p', { class: 'field-error' });
  const actions = h('div', { class: 'actions' });
  let shown = {};

  const act = (label, busyText, run, kind = 'secondary') => {
    const button = h('button', { type: 'button', class: `${kind} small` }, label);
    button.addEventListener('click', () => busy(button, async () => {
      try {
        await run(button);
      } catch (err) {
        toast(err.message, 'error');
      }
    }, busyText));
    return button;
  };

  const render = (c) => {
    const mediaChanged = c.status !== shown.status || c.url !== shown.url;
    el.dataset.status = c.status;
    if (mediaChanged) replace(mediaBox, media(c));
    const avatar = c.avatar_id && state.avatars.get(c.avatar_id);
    const stage = c.stage && isActive(c) && c.stage !== 'generating' ? ` (${c.stage})` : '';
    replace(status, h('span', { class: `badge status-${c.status}`, 'data-testid': 'content-status' },
      STATUS_TEXT[c.status] || c.status), stage);
    replace(details, [titleCase(c.type), QUALITY[c.quality] || c.quality, credits(c.credits_cost),
      avatar && avatar.name].filter(Boolean).join(' · '));
    progressRow.hidden = !isActive(c);
    progress.value = c.progress || 0;
    progressText.textContent = `${c.progress || 0}%`;
    error.hidden = !c.error;
    error.textContent = c.error || '';
    if (c.status !== shown.status) {
      const buttons = [];
      if (isActive(c)) {
        buttons.push(act('Cancel', 'Canceling…', async () => {
          upsertContent(await cancel(c.id));
        }));
      }
      if (c.status === 'failed' || c.status === 'canceled') {
        buttons.push(act(`Retry (${credits(c.credits_cost)})`, 'Retrying…', async () => {
          upsertContent(await api('POST', `/api/content/${c.id}/retry`, { idempotencyKey: uuid4() }));
        }));
      }
      if (!isActive(c)) {
        buttons.push(act('Delete', 'Deleting…', async () => {
          await api('DELETE', `/api/content/${c.id}`);
          removeContent(c.id);
        }, 'danger'));
      }
      replace(actions, buttons);
    }
    shown = { ...c };
  };

  el.append(mediaBox, h('div', { class: 'body' },
    h('h3', { id: `content-${item.id}`, class: 'prompt' }, item.prompt),
    status, details, progressRow, error,
    h('p', { class: 'meta' }, h('time', { datetime: item.created_at }, when(item.created_at))),
    actions));
  el.update = render;
  render(item);
  return el;
}

let cancelVia = null;  // set by the studio: cancel over the socket when connected

export function setCanceler(fn) {
  cancelVia = fn;
}

function cancel(id) {
  return cancelVia ? cancelVia(id) : api('POST', `/api/content/${id}/cancel`);
}
