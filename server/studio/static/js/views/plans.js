// Plans and credit packs. Local billing activates at once; with Stripe, the server returns
// a client_secret and the Payment Element (Stripe.js, allowed by the CSP only then) takes the card.

import { api, get } from '../api.js';
import { busy, errorBox, h, loadingBox, replace, toast } from '../dom.js';
import { credits, money, when } from '../format.js';
import { outcomeUnknown, Submission } from '../http.js';
import { notify, on, state } from '../state.js';

const STRIPE_JS = 'https://js.stripe.com/v3/';

function loadStripe() {
  if (window.Stripe) return Promise.resolve(window.Stripe);
  return new Promise((resolve, reject) => {
    const script = document.createElement('script');
    script.src = STRIPE_JS;
    script.addEventListener('load', () => resolve(window.Stripe));
    script.addEventListener('error', () => reject(new Error('Stripe could not be loaded; check your connection.')));
    document.head.append(script);
  });
}

// The Payment Element for a subscription's first invoice or a credit pack.
async function payWithStripe(host, clientSecret, what) {
  const key = document.querySelector('meta[name="stripe-publishable-key"]').content;
  if (!key) throw new Error('Card payments are not set up on this server (STRIPE_PUBLISHABLE_KEY is missing).');
  const Stripe = await loadStripe();
  const stripe = Stripe(key);
  const elements = stripe.elements({ clientSecret });
  const mount = h('div', { class: 'payment-element' });
  const problem = h('p', { class: 'form-problem', role: 'alert', hidden: true });
  const pay = h('button', { type: 'submit' }, 'Pay now');
  const form = h('form', { 'aria-labelledby': 'payment-title' }, h('h2', { id: 'payment-title' }, `Pay for ${what}`),
    mount, problem, h('div', { class: 'actions' }, pay));
  replace(host, form);
  host.hidden = false;
  elements.create('payment').mount(mount);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(pay, async () => {
      const { error } = await stripe.confirmPayment({ elements, redirect: 'if_required',
        confirmParams: { return_url: `${window.location.origin}/plans` } });
      if (error) {
        problem.textContent = error.message;
        problem.hidden = false;
        return;
      }
      replace(host, h('p', { class: 'success', role: 'status' },
        'Payment received. Your plan and credits update here as soon as Stripe confirms it.'));
    }, 'Paying…');
  });
}

// The plan's own feature lines, else what its numbers say.
function features(plan) {
  const listed = (plan.features || []).filter((f) => typeof f === 'string');
  return listed.length ? listed : [`${credits(plan.credits_per_period)} per ${plan.interval}`,
    `${plan.avatar_limit} ${plan.avatar_limit === 1 ? 'avatar' : 'avatars'}`];
}

export function view() {
  const current = h('div', { 'data-testid': 'current-plan' }, loadingBox());
  const plansGrid = h('div', { class: 'grid plans' }, loadingBox());
  const packsGrid = h('div', { class: 'grid packs' });
  const payment = h('section', { class: 'panel payment', hidden: true, 'aria-live': 'polite' });
  const submission = new Submission();
  let plans = [];

  // Back from a redirect-based payment method: take the secret out of the address bar.
  if (new URLSearchParams(window.location.search).has('payment_intent_client_secret')) {
    window.history.replaceState(window.history.state, '', '/plans');
    toast('Payment submitted; your account updates as soon as it is confirmed.');
  }

  const apply = (reply) => {
    state.subscription = reply.subscription;
    if (reply.plan) state.plan = reply.plan;
    notify('plan');
  };
  const choose = async (plan, button) => busy(button, async () => {
    try {
      const sub = state.subscription;
      const live = sub && !['canceled', 'incomplete_expired'].includes(sub.status);
      const body = { plan_id: plan.id };
      const reply = live
        ? await api('PUT', `/api/subscriptions/${sub.id}`, { body })
        : await api('POST', '/api/subscriptions', { body, idempotencyKey: submission.keyFor(body) });
      submission.settle();
      apply(reply);
      if (reply.client_secret) await payWithStripe(payment, reply.client_secret, `the ${plan.name} plan`);
      else toast(`You are on the ${plan.name} plan.`);
    } catch (error) {
      if (!outcomeUnknown(error)) submission.settle();
      toast(error.message, 'error');
    }
  }, 'Working…');
  const buy = async (pack, button) => busy(button, async () => {
    const body = { pack_id: pack.id };
    try {
      const reply = await api('POST', '/api/subscriptions/payment-intent', { body, idempotencyKey: submission.keyFor(body) });
      submission.settle();
      if (reply.client_secret && reply.status !== 'succeeded') {
        await payWithStripe(payment, reply.client_secret, credits(pack.credits));
      } else {
        toast(`${credits(pack.credits)} added.`);
      }
    } catch (error) {
      if (!outcomeUnknown(error)) submission.settle();
      toast(error.message, 'error');
    }
  }, 'Working…');
  const manage = (path, text) => {
    const button = h('button', { type: 'button', class: 'secondary' }, text);
    button.addEventListener('click', () => busy(button, async () => {
      try {
        apply(await api('POST', path));
      } catch (error) {
        toast(error.message, 'error');
      }
    }, 'Working…'));
    return button;
  };

  const show = () => {
    const sub = state.subscription;
    const plan = state.plan;
    if (plan) {
      const status = sub ? (sub.cancel_at_period_end ? `ends on ${when(sub.current_period_end)}`
        : `${sub.status}${sub.current_period_end ? `, renews on ${when(sub.current_period_end)}` : ''}`) : 'no subscription';
      replace(current, h('p', {}, 'You are on the ', h('strong', {}, plan.name), ` plan (${status}). `),
        sub && sub.status === 'active' && !sub.cancel_at_period_end
          ? manage(`/api/subscriptions/${sub.id}/cancel`, 'Cancel at the end of the period') : null,
        sub && sub.cancel_at_period_end ? manage(`/api/subscriptions/${sub.id}/reactivate`, 'Keep my subscription') : null);
    }
    if (!plans.length) return;
    replace(plansGrid, plans.map((p) => {
      const mine = plan && plan.id === p.id;
      const button = h('button', { type: 'button', class: mine ? 'secondary' : '', disabled: mine || p.id === 'free',
        'aria-describedby': `plan-${p.id}` },
      mine ? 'Current plan' : p.id === 'free' ? 'Included' : state.subscription ? `Switch to ${p.name}` : `Subscribe to ${p.name}`);
      button.addEventListener('click', () => choose(p, button));
      return h('article', { class: ['card', 'plan', mine && 'current'], 'aria-labelledby': `plan-${p.id}` },
        h('div', { class: 'body' },
          h('h3', { id: `plan-${p.id}` }, p.name),
          h('p', { class: 'price' }, p.price_cents ? `${money(p.price_cents, p.currency)} / ${p.interval}` : 'Free'),
          h('ul', { class: 'features' }, features(p).map((f) => h('li', {}, f))),
          h('div', { class: 'actions' }, button)));
    }));
  };

  const load = async () => {
    try {
      const [planList, packs, mine] = await Promise.all([get('/api/subscriptions/plans'),
        get('/api/subscriptions/packs').catch(() => ({ items: [] })), get('/api/subscriptions')]);
      plans = planList.items;
      apply(mine);
      replace(packsGrid, packs.items.length ? packs.items.map((pack) => {
        const button = h('button', { type: 'button', class: 'secondary' },
          `Buy ${credits(pack.credits)} for ${money(pack.price_cents, pack.currency)}`);
        button.addEventListener('click', () => buy(pack, button));
        return h('article', { class: 'card pack' }, h('div', { class: 'body' },
          h('h3', {}, credits(pack.credits)), h('div', { class: 'actions' }, button)));
      }) : h('p', { class: 'hint' }, 'No credit packs are on sale.'));
      show();
    } catch (error) {
      replace(plansGrid, errorBox(error, load));
    }
  };
  const offs = [on('plan', show), on('sync', load)];
  load();
  return {
    el: h('div', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', {}, 'Plans and credits'), current),
      payment,
      h('section', { 'aria-labelledby': 'plans-title' }, h('h2', { id: 'plans-title' }, 'Plans'), plansGrid),
      h('section', { 'aria-labelledby': 'packs-title' }, h('h2', { id: 'packs-title' }, 'Credit packs'),
        h('p', { class: 'hint' }, 'One-off credits on top of your plan.'), packsGrid)),
    destroy: () => offs.forEach((off) => off()),
  };
}
