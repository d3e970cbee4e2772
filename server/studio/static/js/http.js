// One JSON request to the API and its error in API.md's shape ({error, message, details}).

export class ApiError extends Error {
  constructor(status, code, message, details = [], retryAfter = null) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.details = Array.isArray(details) ? details : [];
    this.retryAfter = retryAfter;
  }

  static fromBody(status, body, retryAfter = null) {
    if (body && typeof body === 'object' && typeof body.error === 'string') {
      return new ApiError(status, body.error, body.message, body.details, retryAfter);
    }
    return new ApiError(status, 'http_error', `The server answered ${status}.`);
  }
}

const FRIENDLY = {
  rate_limited: (e) => `Too many requests; try again${e.retryAfter ? ` in ${e.retryAfter} s` : ' shortly'}.`,
  service_unavailable: () => 'The service is briefly unavailable; try again in a moment.',
  internal_error: (e) => e.message || 'Something went wrong on our side.',
};

export async function send(method, path, { body, token, headers = {} } = {}) {
  const init = { method, headers: { Accept: 'application/json', ...headers }, cache: 'no-store',
    credentials: 'same-origin', redirect: 'error' };
  if (token) init.headers.Authorization = `Bearer ${token}`;  // a header, never the URL
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network_error', 'The server could not be reached. Check your connection and try again.');
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const retryAfter = response.headers.get('Retry-After');
  const error = ApiError.fromBody(response.status, data, retryAfter);
  if (FRIENDLY[error.code] && (error.code !== 'internal_error' || !error.message)) {
    error.message = FRIENDLY[error.code](error);
  }
  throw error;
}

// A v4 UUID from getRandomValues (randomUUID needs a secure context; a LAN dev URL is not one).
export function uuid4() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// The idempotency key of one user submission: the same while the user resubmits the same
// form (after a timeout or a dropped connection), a fresh one once the body changes or
// the submission is settled. Same key and same body: the server answers the first result.
export class Submission {
  constructor() {
    this.key = null;
    this.body = null;
  }

  keyFor(body) {
    const text = JSON.stringify(body);
    if (!this.key || this.body !== text) {
      this.key = uuid4();
      this.body = text;
    }
    return this.key;
  }

  settle() {
    this.key = null;
    this.body = null;
  }
}

// A failure whose outcome is unknown (the request may have been applied): resubmit with the same key.
export function outcomeUnknown(error) {
  return ['network_error', 'timeout', 'offline', 'service_unavailable', 'idempotency_key_in_use',
    'internal_error'].includes(error && error.code);
}
