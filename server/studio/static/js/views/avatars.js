// Avatars: the gallery, create (with its cost), live status from creating to ready, edit, delete.

import { api, get, query } from '../api.js';
import { balance, costOf, loadCosts } from '../costs.js';
import { busy, clearFieldErrors, errorBox, field, h, loadingBox, reconcile, replace, showFieldErrors,
  toast } from '../dom.js';
import { credits, titleCase } from '../format.js';
import { outcomeUnknown, Submission, uuid4 } from '../http.js';
import { on, removeAvatar, sortedByNewest, state, upsertAvatar } from '../state.js';

const STATUS_TEXT = { creating: 'Creating…', ready: 'Ready', failed: 'Failed' };

// "hair: red" lines -> {hair: "red"}; numbers and booleans stay typed.
function parseTraits(text) {
  const traits = {};
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const at = line.indexOf(':');
    if (at < 1) throw Object.assign(new Error(`"${line.trim()}" is not "trait: value"`), {
      details: [{ field: 'appearance', message: 'Write one trait per line, as "trait: value".' }] });
    const value = line.slice(at + 1).trim();
    const number = Number(value);
    traits[line.slice(0, at).trim()] = value === 'true' ? true : value === 'false' ? false
      : value !== '' && Number.isFinite(number) ? number : value;
  }
  return Object.keys(traits).length ? traits : undefined;
}

const traitsText = (traits) => Object.entries(traits || {}).map(([k, v]) => `${k}: ${v}`).join('\n');

function avatarFields(avatar = {}) {
  return [
    field('Name', h('input', { name: 'name', type: 'text', required: true, maxlength: 100, value: avatar.name || '' })),
    field('Age', h('input', { name: 'age', type: 'number', required: true, min: 18, max: 120, step: 1,
      value: avatar.age ?? '' }), { hint: 'Avatars are adults: 18 or over.' }),
    field('Description', h('textarea', { name: 'description', rows: 2, maxlength: 2000, value: avatar.description || '' })),
    field('Appearance', h('textarea', { name: 'appearance', rows: 3, value: traitsText(avatar.appearance),
      placeholder: 'hair: red\neyes: green' }), { hint: 'One trait per line, as "trait: value".' }),
    field('Personality', h('input', { name: 'personality', type: 'text', maxlength: 1000, value: avatar.personality || '' })),
    field('Style', h('input', { name: 'style', type: 'text', maxlength: 500, value: avatar.style || '' })),
  ];
}

function bodyFrom(form, { partial }) {
  const values = Object.fromEntries(new FormData(form).entries());
  const body = { name: values.name.trim(), age: Number(values.age) };
  for (const name of ['description', 'personality', 'style']) {
    const text = values[name].trim();
    if (text) body[name] = text;
    else if (partial) body[name] = null;
  }
  const traits = parseTraits(values.appearance);
  if (traits) body.appearance = traits;
  else if (partial) body.appearance = {};
  return body;
}

function formProblem() {
  return h('div', { class: 'form-problem', role: 'alert', hidden: true });
}

function fail(form, problem, error) {
  const placed = showFieldErrors(form, error);
  if (!placed) {
    replace(problem, error.message);
    problem.hidden = false;
  }
}

function avatarCard(avatar, ctx) {
  const el = h('article', { class: 'card avatar-card', 'aria-labelledby': `avatar-${avatar.id}` });
  let editing = false;
  let shown = null;
  const render = (a) => {
    shown = a;
    if (editing) return;
    const media = a.thumbnail_url
      ? h('img', { src: a.thumbnail_url, alt: `Portrait of ${a.name}`, loading: 'lazy', width: 320, height: 320 })
      : h('div', { class: 'placeholder', role: 'img', 'aria-label': STATUS_TEXT[a.status] || a.status },
        a.status === 'creating' ? h('span', { class: 'spinner', 'aria-hidden': 'true' }) : null);
    const del = h('button', { type: 'button', class: 'danger small' }, 'Delete');
    del.addEventListener('click', () => confirmDelete(del, a));
    const regen = h('button', { type: 'button', class: 'secondary small', disabled: a.status === 'creating' },
      `New portrait (${credits(costOf('avatar_thumbnail') ?? 5)})`);
    regen.addEventListener('click', () => busy(regen, async () => {
      try {
        upsertAvatar(await api('POST', `/api/avatars/${a.id}/regenerate-thumbnail`,
          { idempotencyKey: uuid4() }));  // each press is a new request (and a new charge)
      } catch (error) {
        toast(error.message, 'error');
      }
    }, 'Starting…'));
    const edit = h('button', { type: 'button', class: 'secondary small' }, 'Edit');
    edit.addEventListener('click', () => startEdit(a));
    replace(el,
      h('div', { class: 'media' }, media),
      h('div', { class: 'body' },
        h('h3', { id: `avatar-${a.id}` }, a.name),
        h('p', { class: 'meta' }, `Age ${a.age} · `, h('span', { class: `badge status-${a.status}`, 'data-testid': 'avatar-status' },
          STATUS_TEXT[a.status] || titleCase(a.status)), ` · ${a.content_count} made`),
        a.description ? h('p', { class: 'description' }, a.description) : null,
        a.error ? h('p', { class: 'field-error' }, a.error) : null,
        h('div', { class: 'actions' }, edit, regen, del)));
  };
  const confirmDelete = (button, a) => {
    const keep = h('button', { type: 'button', class: 'secondary small' }, 'Keep');
    const sure = h('button', { type: 'button', class: 'danger small' }, `Delete ${a.name}`);
    const box = h('div', { class: 'confirm', role: 'group', 'aria-label': 'Confirm delete' },
      h('p', {}, 'Delete this avatar and its files? Its images and videos stay in your gallery.'), sure, keep);
    button.replaceWith(box);
    sure.focus();
    keep.addEventListener('click', () => render(shown));
    sure.addEventListener('click', () => busy(sure, async () => {
      try {
        await api('DELETE', `/api/avatars/${a.id}`);
        removeAvatar(a.id);
        toast(`${a.name} was deleted.`);
        ctx.refreshLimit();
      } catch (error) {
        toast(error.message, 'error');
      }
    }, 'Deleting…'));
  };
  const startEdit = (a) => {
    editing = true;
    const problem = formProblem();
    const save = h('button', { type: 'submit' }, 'Save');
    const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
    const form = h('form', { class: 'edit-form', 'aria-label': `Edit ${a.name}` }, problem, avatarFields(a),
      h('div', { class: 'actions' }, save, cancel));
    cancel.addEventListener('click', () => {
      editing = false;
      render(shown);
    });
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      clearFieldErrors(form);
      problem.hidden = true;
      busy(save, async () => {
        try {
          const updated = await api('PUT', `/api/avatars/${a.id}`, { body: bodyFrom(form, { partial: true }) });
          editing = false;
          upsertAvatar(updated);
          render(state.avatars.get(a.id) || updated);
        } catch (error) {
          fail(form, problem, error);
        }
      }, 'Saving…');
    });
    replace(el, h('div', { class: 'body' }, h('h3', { id: `avatar-${a.id}` }, `Edit ${a.name}`), form));
    form.elements.namedItem('name').focus();
  };
  el.update = (a) => {
    if (!shown || a.updated_at !== shown.updated_at || a.thumbnail_url !== shown.thumbnail_url) render(a);
  };
  render(avatar);
  return el;
}

export function view(ctx) {
  const grid = h('div', { class: 'grid', 'aria-live': 'polite', 'aria-busy': 'true' }, loadingBox());
  const limitLine = h('p', { class: 'hint', 'data-testid': 'avatar-limit' });
  const costLine = h('p', { class: 'cost', 'aria-live': 'polite', 'data-testid': 'avatar-cost' });
  const problem = formProblem();
  const create = h('button', { type: 'submit' }, 'Create avatar');
  const form = h('form', { class: 'panel create-form', 'aria-labelledby': 'create-avatar' },
    h('h2', { id: 'create-avatar' }, 'Create an avatar'), problem, avatarFields(), costLine,
    h('div', { class: 'actions' }, create));
  const search = h('input', { type: 'search', name: 'search', maxlength: 100, placeholder: 'Name or description' });
  const submission = new Submission();
  let limit = null;
  let term = '';
  let loaded = false;

  const updateCost = () => {
    const cost = costOf('avatar');
    const have = balance();
    if (cost === null || have === null) {
      replace(costLine, 'Working out the cost…');
      return;
    }
    const full = limit && limit.remaining <= 0;
    const short = have < cost;
    replace(costLine, `Cost: ${credits(cost)}. Balance after: ${credits(have - cost)}.`,
      full ? h('strong', { class: 'warning' }, ` Your plan's avatar limit is reached (${limit.used} of ${limit.limit}).`) : null,
      short ? h('strong', { class: 'warning' }, ' Not enough credits.') : null);
    create.disabled = Boolean(full || short);
  };
  const refreshLimit = async () => {
    try {
      limit = await get('/api/avatars/limit');
      replace(limitLine, `${limit.used} of ${limit.limit} avatars used on your plan.`);
    } catch (error) {
      replace(limitLine, error.message);
    }
    updateCost();
  };
  ctx = { ...ctx, refreshLimit };
  const show = () => {
    if (!loaded) return;
    const needle = term.toLowerCase();
    const items = sortedByNewest(state.avatars.values()).filter((a) => !needle
      || a.name.toLowerCase().includes(needle) || (a.description || '').toLowerCase().includes(needle));
    if (!items.length) {
      replace(grid, h('p', { class: 'empty' }, term ? 'No avatar matches.' : 'No avatars yet: create your first one.'));
      return;
    }
    if (grid.querySelector('.empty, .loading, .error-box')) replace(grid);
    reconcile(grid, items, (a) => a.id, (a) => avatarCard(a, ctx));
  };
  const load = async () => {
    grid.setAttribute('aria-busy', 'true');
    try {
      const page = await get(`/api/avatars${query({ limit: 100, search: term || undefined })}`);
      for (const avatar of page.items) upsertAvatar(avatar, { quiet: true });
      loaded = true;
      show();
    } catch (error) {
      replace(grid, errorBox(error, load));
    } finally {
      grid.removeAttribute('aria-busy');
    }
  };

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    problem.hidden = true;
    if (!form.reportValidity()) return;
    busy(create, async () => {
      try {
        const body = bodyFrom(form, { partial: false });
        const avatar = await api('POST', '/api/avatars', { body, idempotencyKey: submission.keyFor(body) });
        submission.settle();
        upsertAvatar(avatar);
        form.reset();
        toast(`${avatar.name} is being created.`);
        refreshLimit();
      } catch (error) {
        if (!outcomeUnknown(error)) submission.settle();
        fail(form, problem, error);
      }
    }, 'Creating…');
  });
  let timer = null;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      term = search.value.trim();
      load();
    }, 250);
  });

  const offs = [on('avatars', show), on('credits', updateCost), on('sync', () => { load(); refreshLimit(); })];
  loadCosts().then(updateCost, () => replace(costLine, 'The cost could not be loaded.'));
  refreshLimit();
  load();
  return {
    el: h('div', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', {}, 'Avatars'), limitLine),
      h('div', { class: 'two-col' }, form,
        h('section', { class: 'panel', 'aria-labelledby': 'your-avatars' },
          h('div', { class: 'section-head' }, h('h2', { id: 'your-avatars' }, 'Your avatars'),
            field('Search avatars', search)),
          grid))),
    destroy: () => offs.forEach((off) => off()),
  };
}
