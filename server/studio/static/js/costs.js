// Credit costs from GET /api/credits/costs: cost = ceil(base x quality multiplier).

import { get } from './api.js';
import { state } from './state.js';

let loading = null;

export function loadCosts() {
  if (state.costs) return Promise.resolve(state.costs);
  if (!loading) {
    loading = get('/api/credits/costs').then((costs) => {
      state.costs = costs;
      return costs;
    }).finally(() => { loading = null; });
  }
  return loading;
}

export function costOf(kind, quality = 'standard') {
  const costs = state.costs;
  if (!costs) return null;
  const base = costs.base[kind];
  const multiplier = costs.quality_multipliers[quality] ?? 1;
  if (base === undefined) return null;
  // The server's table when it has the pair (it is what is charged), else the formula.
  const listed = costs.examples && costs.examples[kind] && costs.examples[kind][quality];
  return listed ?? Math.ceil(base * multiplier - 1e-9);
}

export function balance() {
  return state.credits ? state.credits.balance : null;
}
