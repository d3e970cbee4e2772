// Sign up, check your email, verify, sign in, forgot and reset password.

import { api } from '../api.js';
import { busy, clearFieldErrors, field, h, replace, showFieldErrors } from '../dom.js';
import * as session from '../session.js';
import { notify, state } from '../state.js';

function input(name, type, props = {}) {
  return h('input', { name, type, ...props });
}

// A card with a heading, an optional notice, a form and an area for its outcome.
function authCard(title, { intro, notice, form, footer }) {
  return h('section', { class: 'auth-card', 'aria-labelledby': 'auth-title' },
    h('h1', { id: 'auth-title' }, title),
    intro ? h('p', { class: 'intro' }, intro) : null,
    notice ? h('p', { class: 'notice', role: 'status' }, notice) : null,
    form,
    footer ? h('p', { class: 'auth-footer' }, footer) : null);
}

// Submits through `action(values)`; field errors land beside their fields, others on top.
function authForm(controls, submitText, busyText, action) {
  const problem = h('div', { class: 'form-problem', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit' }, submitText);
  const form = h('form', { novalidate: true }, problem, controls, h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    problem.hidden = true;
    if (!form.checkValidity()) {
      showFieldErrors(form, { details: [...form.elements].filter((c) => c.willValidate && !c.validity.valid)
        .map((c) => ({ field: c.name, message: c.validationMessage })) });
      return;
    }
    const values = Object.fromEntries(new FormData(form).entries());
    await busy(submit, async () => {
      try {
        await action(values, form);
      } catch (error) {
        const placed = showFieldErrors(form, error);
        if (!placed || !error.details.length) {
          replace(problem, error.message);
          problem.hidden = false;
        }
      }
    }, busyText);
  });
  return form;
}

function adultBirthdayMax() {
  const today = new Date();
  const max = new Date(Date.UTC(today.getFullYear() - 18, today.getMonth(), today.getDate()));
  return max.toISOString().slice(0, 10);
}

export function signUp(ctx) {
  const form = authForm([
    field('Email', input('email', 'email', { required: true, autocomplete: 'email', maxlength: 320 })),
    field('Display name (optional)', input('display_name', 'text', { autocomplete: 'nickname', maxlength: 100 })),
    field('Date of birth', input('date_of_birth', 'date', { required: true, max: adultBirthdayMax(), min: '1900-01-01',
      autocomplete: 'bday' }), { hint: 'You must be 18 or older to use Lustify.' }),
    field('Password', input('password', 'password', { required: true, minlength: 8, maxlength: 128,
      autocomplete: 'new-password' }), { hint: 'At least 8 characters.' }),
  ], 'Create account', 'Creating your account…', async (values) => {
    const body = { email: values.email, password: values.password, date_of_birth: values.date_of_birth };
    if (values.display_name.trim()) body.display_name = values.display_name.trim();
    // 202 {message}: nothing else to take, tokens come from signing in once verified.
    await api('POST', '/api/auth/register', { body, auth: false });
    ctx.navigate('/check-email', { data: { email: body.email } });
  });
  return { el: authCard('Create your account', {
    intro: 'Create AI avatars and generate images and videos of them.', form,
    footer: ['Already have an account? ', h('a', { href: '/sign-in' }, 'Sign in')],
  }) };
}

export function checkEmail(ctx) {
  const email = ctx.data && ctx.data.email;
  return { el: h('section', { class: 'auth-card', 'aria-labelledby': 'auth-title' },
    h('h1', { id: 'auth-title' }, 'Check your email'),
    h('p', {}, email ? ['We sent a verification link to ', h('strong', {}, email), '.']
      : 'We sent you a verification link.'),
    h('p', {}, 'Open it to confirm your address, then sign in. The link is valid for 24 hours.'),
    h('p', { class: 'hint' }, 'Nothing arrived? It can take a minute; look in your spam folder too.'),
    h('p', { class: 'actions' }, h('a', { class: 'button', href: '/sign-in' }, 'Go to sign in'))) };
}

// Emailed links carry the token in the fragment (#token=...), which is never sent to a
// server; it is read once and removed from the address bar and the history.
function takeToken() {
  const fromHash = new URLSearchParams(window.location.hash.slice(1)).get('token');
  const fromQuery = new URLSearchParams(window.location.search).get('token');
  if (fromHash || fromQuery) window.history.replaceState(window.history.state, '', window.location.pathname);
  return fromHash || fromQuery;
}

export function verifyEmail() {
  const token = takeToken();
  const outcome = h('div', { 'aria-live': 'polite' });
  const el = h('section', { class: 'auth-card', 'aria-labelledby': 'auth-title' },
    h('h1', { id: 'auth-title' }, 'Verify your email'), outcome);
  const next = () => (session.token() ? h('a', { class: 'button', href: '/dashboard' }, 'Continue to the studio')
    : h('a', { class: 'button', href: '/sign-in' }, 'Sign in'));
  if (!token) {
    replace(outcome, h('p', { role: 'alert' }, 'This page needs the link from your email.'), next());
    return { el };
  }
  replace(outcome, h('p', { class: 'loading', role: 'status' }, 'Verifying your email address…'));
  api('GET', `/api/auth/verify-email/${encodeURIComponent(token)}`, { auth: false }).then((reply) => {
    if (session.token() && reply && reply.user && state.user && reply.user.id === state.user.id) {
      state.user = reply.user;
      notify('user');
    }
    replace(outcome, h('p', { class: 'success', role: 'status' }, 'Your email address is verified. Thank you!'),
      h('p', { class: 'actions' }, next()));
  }, (error) => {
    const text = error.code === 'invalid_token'
      ? 'This link is invalid, has expired or was already used. Sign in to ask for a new one.'
      : error.message;
    replace(outcome, h('p', { class: 'error-box', role: 'alert' }, text), h('p', { class: 'actions' }, next()));
  });
  return { el };
}

export function signIn(ctx) {
  const form = authForm([
    field('Email', input('email', 'email', { required: true, autocomplete: 'username', maxlength: 320 })),
    field('Password', input('password', 'password', { required: true, autocomplete: 'current-password',
      maxlength: 1024 })),
  ], 'Sign in', 'Signing in…', async (values) => {
    const reply = await api('POST', '/api/auth/login', { body: { email: values.email, password: values.password },
      auth: false });
    const tokens = reply.tokens || reply;
    ctx.signedIn({ ...tokens, user: reply.user });
    ctx.navigate(ctx.afterSignIn || '/dashboard', { replace: true });
  });
  return { el: authCard('Sign in', {
    notice: ctx.data && ctx.data.notice, form,
    footer: [h('a', { href: '/forgot-password' }, 'Forgot your password?'), ' · New here? ',
      h('a', { href: '/sign-up' }, 'Create an account')],
  }) };
}

export function forgotPassword() {
  const done = h('div', { 'aria-live': 'polite' });
  const form = authForm([
    field('Email', input('email', 'email', { required: true, autocomplete: 'email', maxlength: 320 })),
  ], 'Send the reset link', 'Sending…', async (values) => {
    await api('POST', '/api/auth/forgot-password', { body: { email: values.email }, auth: false });
    replace(done, h('p', { class: 'success', role: 'status' },
      'If an account exists for that address, a link to reset its password is on its way. It is valid for 1 hour.'));
  });
  return { el: authCard('Forgot your password?', {
    intro: 'We will email you a link to choose a new one.', form: h('div', {}, form, done),
    footer: [h('a', { href: '/sign-in' }, 'Back to sign in')],
  }) };
}

export function resetPassword(ctx) {
  const token = takeToken();
  if (!token) {
    return { el: authCard('Choose a new password', {
      notice: 'This page needs the link from your password reset email.',
      footer: [h('a', { href: '/forgot-password' }, 'Ask for a new link')],
    }) };
  }
  const form = authForm([
    field('New password', input('password', 'password', { required: true, minlength: 8, maxlength: 128,
      autocomplete: 'new-password' }), { hint: 'At least 8 characters.' }),
    field('Repeat the new password', input('confirm', 'password', { required: true, minlength: 8, maxlength: 128,
      autocomplete: 'new-password' })),
  ], 'Change password', 'Changing…', async (values) => {
    if (values.password !== values.confirm) {
      const error = new Error('The two passwords differ.');
      error.details = [{ field: 'confirm', message: 'The two passwords differ.' }];
      throw error;
    }
    await api('POST', '/api/auth/reset-password', { body: { token, password: values.password }, auth: false });
    if (session.token()) session.end('signed_out');  // every session of the account just ended
    ctx.navigate('/sign-in', { replace: true, data: { notice: 'Your password is changed. Sign in with the new one.' } });
  });
  return { el: authCard('Choose a new password', { form }) };
}
