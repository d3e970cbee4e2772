// Building the page from data. Text is always inserted as text nodes: nothing a user typed
// is ever parsed as HTML (the CSP's Trusted Types rule makes every HTML sink refuse strings).

const PROPERTIES = new Set(['value', 'checked', 'disabled', 'selected', 'hidden', 'open', 'required',
  'readOnly', 'multiple', 'noValidate', 'min', 'max', 'step']);

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'on') {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (name === 'class') {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (PROPERTIES.has(name)) {
      el[name] = value;
    } else if (name.startsWith('on')) {
      throw new Error(`use {on: {...}} for ${name}`);  // no handler attributes, ever
    } else if (name === 'href' || name === 'src' || name === 'poster') {
      el.setAttribute(name, safeUrl(value));
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// Only http(s), same-origin paths and blob: URLs reach href/src: no script or data URLs.
export function safeUrl(value) {
  const text = String(value);
  try {
    const url = new URL(text, window.location.origin);
    if (url.protocol === 'http:' || url.protocol === 'https:' || url.protocol === 'blob:') return text;
  } catch { /* falls through */ }
  return '#';
}

let nextId = 0;
export function uid(prefix = 'id') {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

// A labelled form field: label, control, hint and an error slot wired with aria-describedby.
export function field(labelText, control, { hint } = {}) {
  control.id = control.id || uid('field');
  const hintEl = hint ? h('p', { class: 'hint', id: `${control.id}-hint` }, hint) : null;
  const errorEl = h('p', { class: 'field-error', id: `${control.id}-error`, hidden: true });
  const described = [hintEl && hintEl.id, errorEl.id].filter(Boolean).join(' ');
  control.setAttribute('aria-describedby', described);
  return h('div', { class: 'field', dataset: { field: control.name || '' } },
    h('label', { for: control.id }, labelText), control, hintEl, errorEl);
}

export function showFieldErrors(form, error) {
  clearFieldErrors(form);
  let shown = 0;
  for (const detail of (error && error.details) || []) {
    const name = String(detail.field || '').split('.')[0];
    const control = name && form.elements.namedItem(name);
    if (!control || !(control instanceof HTMLElement)) continue;
    const slot = form.querySelector(`#${CSS.escape(control.id)}-error`);
    if (!slot) continue;
    slot.hidden = false;
    slot.textContent = detail.message;
    control.setAttribute('aria-invalid', 'true');
    if (shown === 0) control.focus();
    shown += 1;
  }
  return shown;
}

export function clearFieldErrors(form) {
  for (const slot of form.querySelectorAll('.field-error')) {
    slot.hidden = true;
    slot.textContent = '';
  }
  for (const control of form.querySelectorAll('[aria-invalid]')) control.removeAttribute('aria-invalid');
}

// A message box for a failed request, with a retry button when the request can be repeated.
export function errorBox(error, retry) {
  return h('div', { class: 'error-box', role: 'alert' },
    h('p', {}, error && error.message ? error.message : 'Something went wrong.'),
    retry ? h('button', { type: 'button', class: 'secondary', on: { click: retry } }, 'Try again') : null);
}

export function loadingBox(text = 'Loading…') {
  return h('p', { class: 'loading', role: 'status' }, text);
}

// Runs `load` and shows a loading state, then `render(result)` or an error with a retry.
export async function loadInto(container, load, render) {
  replace(container, loadingBox());
  container.setAttribute('aria-busy', 'true');
  try {
    const result = await load();
    replace(container, render(result));
  } catch (error) {
    replace(container, errorBox(error, () => loadInto(container, load, render)));
  } finally {
    container.removeAttribute('aria-busy');
  }
}

// A button that shows it is busy while its action runs, and cannot be pressed twice.
export async function busy(button, action, busyText) {
  const label = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  if (busyText) button.textContent = busyText;
  try {
    return await action();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    if (busyText) button.textContent = label;
  }
}

export function toast(message, kind = 'info') {
  const host = document.getElementById('toasts');
  if (!host) return;
  const item = h('p', { class: `toast toast-${kind}` }, message);
  host.append(item);
  while (host.children.length > 3) host.firstElementChild.remove();
  setTimeout(() => item.remove(), kind === 'error' ? 8000 : 4000);
}

// Keeps `container`'s children in the order of `items`, one per key: existing elements are
// updated in place (focus, playing videos and open forms survive), new ones created.
// `create(item)` returns an element; its `update(item)` property, if any, refreshes it.
export function reconcile(container, items, key, create) {
  const existing = new Map();
  for (const child of container.children) if (child.dataset.key) existing.set(child.dataset.key, child);
  let index = 0;
  for (const item of items) {
    const k = String(key(item));
    let el = existing.get(k);
    if (el) {
      existing.delete(k);
      if (el.update) el.update(item);
    } else {
      el = create(item);
      el.dataset.key = k;
    }
    if (container.children[index] !== el) container.insertBefore(el, container.children[index] || null);
    index += 1;
  }
  for (const el of existing.values()) el.remove();
  for (const child of [...container.children]) if (!child.dataset.key) child.remove();  // empty/loading notes
}
