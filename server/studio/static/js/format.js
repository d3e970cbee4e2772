// Numbers, money and times as people read them.

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const compact = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'short' });
const shortDate = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });

export function credits(n) {
  const value = Number(n) || 0;
  return `${value.toLocaleString()} ${Math.abs(value) === 1 ? 'credit' : 'credits'}`;
}

export function signed(n) {
  return n > 0 ? `+${n}` : String(n);
}

export function money(cents, currency = 'usd') {
  return new Intl.NumberFormat(undefined, { style: 'currency', currency: currency.toUpperCase() })
    .format((Number(cents) || 0) / 100);
}

export function when(iso) {
  if (!iso) return '';
  return dateTime.format(new Date(iso));
}

export function shortWhen(iso) {
  return iso ? compact.format(new Date(iso)) : '';
}

export function day(isoDate) {
  return shortDate.format(new Date(`${isoDate}T00:00:00Z`));
}

export function ago(iso) {
  if (!iso) return '';
  const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
  const steps = [[60, 'second'], [60, 'minute'], [24, 'hour'], [30, 'day'], [12, 'month'], [Infinity, 'year']];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return relative.format(Math.round(value), unit);
    value /= size;
  }
  return when(iso);
}

export function titleCase(word) {
  const text = String(word || '');
  return text.charAt(0).toUpperCase() + text.slice(1);
}
