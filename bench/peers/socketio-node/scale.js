// The load driver of bench/realtime_scale.py: N socket.io-client connections in one process,
// all opened at once (at most `inflight` handshakes outstanding), websocket transport.
// Reconnection on (the client's defaults) when asked: each reconnect resumes with the socket's
// last durable event_id (`auth.last_event_id`, API.md). Counts every durable event per socket
// (duplicates, holes) and the latency of `activity` events (now - data.sent_at).
//   node scale.js URL TOKENS_FILE COUNT INFLIGHT RECONNECT(0|1) CONNECT_TIMEOUT_S
// stdin: reset | report | counts | quit; stdout: one JSON line per command.
"use strict";
const fs = require("fs");
const readline = require("readline");
const { io } = require("socket.io-client");

const [url, tokensFile, countArg, inflightArg, reconnectArg, timeoutArg] = process.argv.slice(2);
const tokens = fs.readFileSync(tokensFile, "utf8").split("\n").filter(Boolean).slice(0, Number(countArg));
const inflight = Number(inflightArg || 1000);
const reconnect = reconnectArg === "1";
const connectTimeout = Number(timeoutArg || 120) * 1000;
const now = () => performance.timeOrigin + performance.now();

let latencies = [];
let connected = 0;
let everConnected = 0;
let disconnects = 0;
let minConnected = Infinity;
let firstDisconnectAt = null;
let allBackAt = null;
let connectErrors = 0;
const states = [];

function open(index) {
  const state = { last: 0, received: 0, dups: 0, holes: 0, up: false, ever: false, socket: null };
  states[index] = state;
  return new Promise((resolve) => {
    const socket = io(url, {
      transports: ["websocket"], forceNew: true, reconnection: reconnect, timeout: 20000,
      // The first connect is a fresh page (no id); every reconnect resumes after the last id seen.
      auth: (cb) => cb(state.ever ? { token: tokens[index], last_event_id: state.last } : { token: tokens[index] }),
    });
    state.socket = socket;
    socket.on("activity", (payload) => {
      const sent = payload && payload.activity && payload.activity.data && payload.activity.data.sent_at;
      if (typeof sent === "number") latencies.push(now() - sent);
      const id = payload && payload.event_id;
      if (typeof id !== "number") return;  // the Node reference's events carry no durable id
      if (id <= state.last) { state.dups += 1; return; }
      if (id > state.last + 1) state.holes += id - state.last - 1;
      state.last = id;
      state.received += 1;
    });
    socket.on("connect", () => {
      if (!state.up) { state.up = true; connected += 1; }
      if (connected === tokens.length && firstDisconnectAt !== null && allBackAt === null) allBackAt = now();
      if (!state.ever) { state.ever = true; everConnected += 1; resolve(true); }
    });
    socket.on("disconnect", () => {
      if (state.up) { state.up = false; connected -= 1; disconnects += 1; }
      if (firstDisconnectAt === null) firstDisconnectAt = now();
      allBackAt = null;
      minConnected = Math.min(minConnected, connected);
    });
    socket.on("connect_error", () => {
      connectErrors += 1;
      if (!reconnect && !state.ever) resolve(false);
    });
  });
}

async function connectAll() {
  const started = now();
  let next = 0;
  const worker = async () => {
    while (next < tokens.length) await open(next++);
  };
  const all = Promise.all(Array.from({ length: Math.min(inflight, tokens.length) }, worker));
  const timedOut = await Promise.race([all.then(() => false), new Promise((r) => setTimeout(() => r(true), connectTimeout).unref())]);
  return { connected, connect_ms: now() - started, timed_out: timedOut, connect_errors: connectErrors };
}

function report() {
  const sorted = latencies.slice().sort((a, b) => a - b);
  const pick = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { received: sorted.length, p50: pick(0.5), p99: pick(0.99), max: sorted[sorted.length - 1],
           connected, disconnects, min_connected: minConnected === Infinity ? connected : minConnected,
           first_disconnect_at: firstDisconnectAt, all_back_at: allBackAt, connect_errors: connectErrors };
}

function counts() {
  // per socket, in token order: [distinct durable events received, duplicates, holes, last event_id]
  return { counts: states.map((s) => (s ? [s.received, s.dups, s.holes, s.last] : [0, 0, 0, 0])) };
}

async function main() {
  console.log(JSON.stringify(await connectAll()));
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line === "reset") { latencies = []; console.log(JSON.stringify({ reset: true })); }
    else if (line === "report") console.log(JSON.stringify(report()));
    else if (line === "counts") console.log(JSON.stringify(counts()));
    else if (line === "quit") break;
  }
  states.forEach((s) => s && s.socket && s.socket.close());
  process.exit(0);
}
main().catch((err) => { console.log(JSON.stringify({ error: String(err && err.message || err) })); process.exit(1); });
