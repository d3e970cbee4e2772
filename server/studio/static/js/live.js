// The live connection: Socket.IO with the access token, resumed from the last event id
// after any drop, every durable event applied once and in order.
//
// Event ids are kept exactly as received and handed back as `last_event_id`. When they are
// integers (API.md: a gapless sequence per user), N followed by N+2 means one was missed
// and `events.replay` fetches it before anything newer is applied. `generation.progress`
// is ephemeral: it carries the id of the latest durable event, so it is never dropped as
// a duplicate, and an id ahead of ours also reveals a gap.

import { io } from '/studio/vendor/socket.io-client-4.8.4/socket.io.esm.min.js';
import { ApiError } from './http.js';
import * as session from './session.js';

const ACK_TIMEOUT_MS = 15_000;
const SEEN_LIMIT = 10_000;
const EPHEMERAL = new Set(['generation.progress']);
const PROGRESS_GAP_GRACE_MS = 1500;  // a durable event may trail the progress tick that names it

const isSequence = (id) => Number.isInteger(id);
const STREAM_ID = /^(\d+)-(\d+)$/;

// -1, 0, 1, or null when the two ids cannot be ordered.
export function compareIds(a, b) {
  if (isSequence(a) && isSequence(b)) return Math.sign(a - b);
  const ma = STREAM_ID.exec(String(a));
  const mb = STREAM_ID.exec(String(b));
  if (typeof a === 'string' && typeof b === 'string' && ma && mb) {
    const [x, y] = [BigInt(ma[1]), BigInt(mb[1])];
    if (x !== y) return x < y ? -1 : 1;
    const [p, q] = [BigInt(ma[2]), BigInt(mb[2])];
    return p === q ? 0 : (p < q ? -1 : 1);
  }
  return a === b ? 0 : null;
}

export class Live {
  // onEvent(name, payload); onState(state); onSync({resumed}) after every connect.
  constructor({ onEvent, onState, onSync }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.onSync = onSync;
    this.socket = null;
    this.lastId = null;
    this.seen = new Set();
    this.replaying = false;
    this.held = [];
    this.refused = 0;
    this.gapTimer = null;
    this.awaitedId = 0;
    this.state = 'offline';
    this.stats = { applied: 0, duplicates: 0, replays: 0, connects: 0, resumedFrom: null };
  }

  start() {
    if (this.socket) return;
    this.socket = io({
      path: '/socket.io',
      autoConnect: false,
      reconnectionDelay: 500,
      reconnectionDelayMax: 8000,
      // Called before every (re)connect: a fresh token and where to resume from.
      auth: (cb) => {
        // A failed refresh still answers: the server then refuses and refusedBy() takes over.
        this.authPayload().then(cb, () => cb({ token: session.token() || '' }));
      },
    });
    const socket = this.socket;
    socket.on('connect', () => {
      const resumed = this.stats.connects > 0 && this.lastId !== null;
      this.stats.connects += 1;
      this.refused = 0;
      this.setState('live');
      this.onSync({ resumed });
    });
    socket.on('disconnect', (reason) => {
      if (reason === 'io client disconnect') return;  // ours: stop() or a re-authentication
      this.setState('reconnecting');
      if (reason === 'io server disconnect') setTimeout(() => this.socket === socket && socket.connect(), 500);
    });
    socket.io.on('reconnect_attempt', () => this.setState('reconnecting'));
    socket.on('connect_error', (error) => this.refusedBy(error));
    socket.on('session.revoked', () => session.end('revoked'));
    socket.onAny((name, payload) => this.receive(name, payload));
    this.setState('connecting');
    socket.connect();
  }

  stop() {
    clearTimeout(this.gapTimer);
    this.gapTimer = null;
    this.awaitedId = 0;
    if (this.socket) {
      this.socket.offAny();
      this.socket.disconnect();
    }
    this.socket = null;
    this.lastId = null;
    this.seen.clear();
    this.held = [];
    this.replaying = false;
    this.stats = { applied: 0, duplicates: 0, replays: 0, connects: 0, resumedFrom: null };
    this.setState('offline');
  }

  get connected() {
    return Boolean(this.socket && this.socket.connected);
  }

  setState(state) {
    this.state = state;
    this.onState(state);
  }

  async authPayload() {
    if (session.expiringSoon()) await session.refresh();
    const auth = { token: session.token() };
    if (this.lastId !== null) auth.last_event_id = this.lastId;
    this.stats.resumedFrom = this.lastId;
    return auth;
  }

  // The server refused the connection (its middleware answered connect_error).
  async refusedBy(error) {
    if (this.socket && this.socket.active) {  // a transport failure: socket.io retries by itself
      this.setState('reconnecting');
      return;
    }
    const socket = this.socket;
    this.refused += 1;
    if (error.message === 'validation_error') {
      // The server cannot resume from our id (e.g. it changed id formats): start afresh.
      this.lastId = null;
      this.seen.clear();
    } else if (error.message === 'unauthorized') {
      if (this.refused > 2) {
        session.end('expired');
        return;
      }
      try {
        await session.refresh();
      } catch {
        return;  // the session ended, or refresh retries on its own schedule
      }
    }
    this.setState('reconnecting');
    setTimeout(() => this.socket === socket && socket.connect(), Math.min(8000, 500 * this.refused));
  }

  // A new access token: the open socket still holds the old one, so connect again with it.
  reauthenticate() {
    if (!this.socket || !this.connected) return;
    this.socket.disconnect();
    this.setState('reconnecting');
    this.socket.connect();
  }

  receive(name, payload) {
    if (this.replaying) {
      this.held.push([name, payload]);
      return;
    }
    this.process(name, payload);
  }

  // `force`: apply even past a gap (held events after a replay, or no replay possible now).
  process(name, payload, force = false) {
    const id = payload && typeof payload === 'object' ? payload.event_id : undefined;
    if (id === undefined || id === null) {
      this.deliver(name, payload);
      return;
    }
    if (EPHEMERAL.has(name)) {
      this.deliver(name, payload);
      if (isSequence(id)) {
        if (isSequence(this.lastId) && id > this.lastId) this.replaySoon(id);
      } else if (this.lastId === null || compareIds(id, this.lastId) === 1) {
        this.lastId = id;  // stream ids: progress is in the history too
      }
      return;
    }
    const key = `${typeof id}:${id}`;
    if (this.seen.has(key)) {
      this.stats.duplicates += 1;
      return;
    }
    if (!force && this.connected && isSequence(id) && isSequence(this.lastId) && id > this.lastId + 1) {
      this.held.push([name, payload]);
      this.replay();
      return;
    }
    this.remember(key);
    if (this.lastId === null || compareIds(id, this.lastId) !== -1) this.lastId = id;
    this.stats.applied += 1;
    this.deliver(name, payload);
  }

  deliver(name, payload) {
    try {
      this.onEvent(name, payload);
    } catch (error) {
      console.error('applying', name, error);  // one bad event must not stop the others
    }
  }

  remember(key) {
    this.seen.add(key);
    if (this.seen.size > SEEN_LIMIT) this.seen.delete(this.seen.values().next().value);
  }

  // A progress tick named durable event `id` we have not seen: it may still be on its way
  // (durable events go through the relay); if it has not come after a grace, replay.
  replaySoon(id) {
    this.awaitedId = Math.max(this.awaitedId || 0, id);
    if (this.gapTimer) return;
    this.gapTimer = setTimeout(() => {
      this.gapTimer = null;
      if (isSequence(this.lastId) && this.lastId < this.awaitedId) this.replay();
    }, PROGRESS_GAP_GRACE_MS);
  }

  // Everything after our last id, in order; live events wait until it is applied.
  async replay() {
    if (this.replaying || this.lastId === null || !this.connected) return;
    this.replaying = true;
    this.stats.replays += 1;
    try {
      const data = await this.action('events.replay', { last_event_id: this.lastId });
      const events = Array.isArray(data) ? data : (data && data.events) || [];
      for (const event of events) this.process(event.event, event.data);
    } catch {
      this.onSync({ resumed: false });  // could not replay: reload the state instead
    } finally {
      this.replaying = false;
      const held = this.held.splice(0);
      for (const [name, payload] of held) this.process(name, payload, true);
    }
  }

  // A client -> server action answered through the ack: its data, or an ApiError.
  async action(name, data) {
    if (!this.connected) {
      throw new ApiError(0, 'offline', 'Not connected to the studio server; try again when the status shows Live.');
    }
    let ack = await this.emit(name, data);
    if (ack && ack.ok === false && ack.error && ack.error.error === 'token_expired') {
      await session.refresh();  // the session's listener re-authenticates the socket
      await this.whenConnected();
      ack = await this.emit(name, data);
    }
    if (ack && ack.ok) return ack.data;
    const body = (ack && ack.error) || { error: 'internal_error', message: 'No answer from the server.' };
    throw ApiError.fromBody(0, body);
  }

  async emit(name, data) {
    try {
      return await this.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(name, data);
    } catch {
      throw new ApiError(0, 'timeout', 'No answer from the server in time. Your request may still go through; submitting it again will not repeat it.');
    }
  }

  // Resolves once the socket is connected (again).
  whenConnected(timeoutMs = 10_000) {
    const socket = this.socket;
    if (!socket) return Promise.reject(new ApiError(0, 'offline', 'Not connected.'));
    if (socket.connected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        socket.off('connect', done);
        reject(new ApiError(0, 'offline', 'Could not reconnect to the studio server.'));
      }, timeoutMs);
      socket.once('connect', done);
    });
  }
}
