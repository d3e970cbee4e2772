// Generate: prompt, avatar, image or video, quality, aspect ratio; the cost and the balance
// after it before submitting; sent over the socket as `content.generate` with a request id.

import { api, get } from '../api.js';
import { balance, costOf, loadCosts } from '../costs.js';
import { busy, clearFieldErrors, field, h, reconcile, replace, showFieldErrors, toast } from '../dom.js';
import { credits } from '../format.js';
import { outcomeUnknown, Submission } from '../http.js';
import { on, sortedByNewest, state, upsertAvatar, upsertContent } from '../state.js';
import { contentCard, isActive } from './content-card.js';

const RATIOS = ['1:1', '16:9', '9:16', '4:3', '3:4', '3:2', '2:3'];
const QUALITIES = [['standard', 'Standard'], ['hd', 'HD'], ['premium', 'Premium']];

function select(name, options, value) {
  return h('select', { name }, options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
}

// The request over the socket; the REST route with the same key only while the server does
// not take `request_id` yet (it then refuses the field before creating anything).
async function submit(live, body, key) {
  try {
    return await live.action('content.generate', { ...body, request_id: key });
  } catch (error) {
    const refusedField = error.code === 'validation_error'
      && error.details.some((d) => d.field === 'request_id');
    if (!refusedField) throw error;
  }
  const { kind, ...rest } = body;
  return api('POST', `/api/content/generate/${kind}`, { body: rest, idempotencyKey: key });
}

export function view(ctx) {
  const kindImage = h('input', { type: 'radio', name: 'kind', value: 'image', id: 'kind-image', checked: true });
  const kindVideo = h('input', { type: 'radio', name: 'kind', value: 'video', id: 'kind-video' });
  const avatarSelect = h('select', { name: 'avatar_id' }, h('option', { value: '' }, 'No avatar'));
  const ratio = select('aspect_ratio', RATIOS.map((r) => [r, r]), '1:1');
  const duration = h('input', { name: 'duration_seconds', type: 'number', min: 1, max: 15, step: 1, value: 6 });
  const durationField = field('Duration (seconds)', duration, { hint: '1 to 15 seconds.' });
  const quality = select('quality', QUALITIES, 'standard');
  const prompt = h('textarea', { name: 'prompt', rows: 4, required: true, maxlength: 2000,
    placeholder: 'What should the picture or clip show?' });
  const costLine = h('p', { class: 'cost', 'aria-live': 'polite', 'data-testid': 'generate-cost' });
  const problem = h('div', { class: 'form-problem', role: 'alert', hidden: true });
  const send = h('button', { type: 'submit' }, 'Generate');
  const form = h('form', { class: 'panel generate-form', 'aria-labelledby': 'generate-title', novalidate: true },
    h('h2', { id: 'generate-title' }, 'New generation'), problem,
    field('Prompt', prompt, { hint: 'Up to 2,000 characters.' }),
    h('fieldset', { class: 'kind' }, h('legend', {}, 'Kind'),
      h('label', { for: 'kind-image', class: 'choice' }, kindImage, ' Image'),
      h('label', { for: 'kind-video', class: 'choice' }, kindVideo, ' Video')),
    h('div', { class: 'row' }, field('Avatar', avatarSelect), field('Quality', quality)),
    h('div', { class: 'row' }, field('Aspect ratio', ratio), durationField),
    costLine, h('div', { class: 'actions' }, send));
  const running = h('div', { class: 'list', 'data-testid': 'running' });
  const results = h('div', { class: 'grid', 'data-testid': 'results' });
  const submission = new Submission();

  const values = () => {
    const data = Object.fromEntries(new FormData(form).entries());
    const body = { kind: data.kind, prompt: data.prompt.trim(), quality: data.quality, aspect_ratio: data.aspect_ratio };
    if (data.avatar_id) body.avatar_id = data.avatar_id;
    if (data.kind === 'video') body.duration_seconds = Number(data.duration_seconds);
    return body;
  };
  const updateCost = () => {
    const { kind, quality: q } = values();
    durationField.hidden = kind !== 'video';
    const cost = costOf(kind, q);
    const have = balance();
    if (cost === null || have === null) {
      replace(costLine, 'Working out the cost…');
      return;
    }
    const short = have < cost;
    replace(costLine, h('span', { 'data-testid': 'cost' }, `Cost: ${credits(cost)}`), ' · ',
      h('span', { 'data-testid': 'balance-after' }, `Balance after: ${credits(have - cost)}`),
      short ? h('strong', { class: 'warning' }, ' Not enough credits: see Plans to add more.') : null);
    send.disabled = short;
  };
  const showAvatars = () => {
    const chosen = avatarSelect.value;
    const ready = sortedByNewest(state.avatars.values()).filter((a) => a.status === 'ready');
    replace(avatarSelect, h('option', { value: '' }, 'No avatar'),
      ready.map((a) => h('option', { value: a.id, selected: a.id === chosen }, a.name)));
  };
  const showContent = () => {
    const items = sortedByNewest(state.content.values());
    const active = items.filter(isActive);
    if (active.length) reconcile(running, active, (c) => c.id, contentCard);
    else replace(running, h('p', { class: 'empty' }, 'Nothing is generating right now.'));
    const done = items.filter((c) => !isActive(c)).slice(0, 12);
    if (done.length) reconcile(results, done, (c) => c.id, contentCard);
    else replace(results, h('p', { class: 'empty' }, 'Your results appear here as soon as they are ready.'));
  };

  form.addEventListener('input', updateCost);
  form.addEventListener('change', (event) => {
    if (event.target.name === 'kind') ratio.value = event.target.value === 'video' ? '16:9' : '1:1';
    updateCost();
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    problem.hidden = true;
    if (!prompt.value.trim()) {
      showFieldErrors(form, { details: [{ field: 'prompt', message: 'Describe what to generate.' }] });
      return;
    }
    const body = values();
    busy(send, async () => {
      try {
        const content = await submit(ctx.live, body, submission.keyFor(body));
        submission.settle();
        upsertContent(content);
        prompt.value = '';
        updateCost();
        toast('Queued: it appears below with its progress.');
      } catch (error) {
        if (!outcomeUnknown(error)) submission.settle();
        if (!showFieldErrors(form, error)) {
          replace(problem, error.message);
          problem.hidden = false;
        }
      }
    }, 'Sending…');
  });

  const offs = [on('content', showContent), on('avatars', () => { showAvatars(); showContent(); }),
    on('credits', updateCost)];
  const load = async () => {
    try {
      const [page, avatars] = await Promise.all([get('/api/content?limit=30'), get('/api/avatars?limit=100')]);
      for (const c of page.items) upsertContent(c, { quiet: true });
      for (const a of avatars.items) upsertAvatar(a, { quiet: true });
      showAvatars();
      showContent();
    } catch (error) {
      toast(error.message, 'error');
    }
  };
  offs.push(on('sync', load));
  loadCosts().then(updateCost, () => replace(costLine, 'The cost could not be loaded.'));
  updateCost();
  showAvatars();
  showContent();
  load();
  return {
    el: h('div', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', {}, 'Generate')),
      h('div', { class: 'two-col' }, form,
        h('div', { class: 'stack' },
          h('section', { class: 'panel', 'aria-labelledby': 'running-title' },
            h('h2', { id: 'running-title' }, 'In progress'), running),
          h('section', { class: 'panel', 'aria-labelledby': 'results-title' },
            h('h2', { id: 'results-title' }, 'Latest results'), results)))),
    destroy: () => offs.forEach((off) => off()),
  };
}
