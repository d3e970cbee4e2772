// The churn driver for both servers (bench/realtime_churn.py), one process of socket.io-client:
// a steady set of clients that receive `activity` events (latency = now - data.sent_at), and
// clients that connect at a fixed rate, stay 1-5 s and leave in one of four ways:
//   websocket  close() over a websocket
//   polling    close() over HTTP long-polling
//   dropped    a websocket whose TCP connection is reset (no close frame, no FIN)
//   frozen     a websocket that stops reading and answering pings; reset after FROZEN_MS
// Commands on stdin, one JSON line answered per command: start, stats, report, stop, quit.
"use strict";
const fs = require("fs");
const readline = require("readline");
const { io } = require("socket.io-client");

const [url, tokensFile, steadyArg, rateArg] = process.argv.slice(2);
const tokens = fs.readFileSync(tokensFile, "utf8").split("\n").filter(Boolean);
const steadyCount = Number(steadyArg);
const churnTokens = tokens.slice(steadyCount);
const rate = Number(rateArg); // churn connections started per second
const KINDS = [["websocket", 55], ["polling", 20], ["dropped", 15], ["frozen", 10]];
const FROZEN_MS = 60_000; // past the servers' ping interval + timeout (25 s + 20 s)
const now = () => performance.timeOrigin + performance.now();

let latencies = [];
const steady = [];
const stats = { started: 0, connected: 0, left: 0, failed: 0, errors: {}, kinds: {} };
let live = 0;
let ticker = null;
let seed = 42;
const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);

function pickKind() {
  let r = random() * 100;
  for (const [kind, weight] of KINDS) { if ((r -= weight) < 0) return kind; }
  return KINDS[0][0];
}

function open(token, transports) {
  return io(url, { transports, auth: { token }, reconnection: false, forceNew: true, timeout: 20_000 });
}

function connectSteady(token) {
  return new Promise((resolve, reject) => {
    const socket = open(token, ["websocket"]);
    socket.on("activity", (payload) => latencies.push(now() - payload.activity.data.sent_at));
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(err));
  });
}

function rawSocket(socket) {
  const transport = socket.io.engine && socket.io.engine.transport;
  return transport && transport.ws && transport.ws._socket;
}

function churnOne() {
  const kind = pickKind();
  const token = churnTokens[stats.started % churnTokens.length];
  stats.started++;
  stats.kinds[kind] = (stats.kinds[kind] || 0) + 1;
  live++;
  let done = false;
  const finish = (failed, reason) => {
    if (done) return;
    done = true;
    live--;
    if (failed) {
      stats.failed++;
      stats.errors[reason] = (stats.errors[reason] || 0) + 1;
    } else stats.left++;
  };
  const socket = open(token, kind === "polling" ? ["polling"] : ["websocket"]);
  socket.once("connect_error", (err) => { finish(true, String(err && err.message || err)); socket.close(); });
  socket.once("connect", () => {
    stats.connected++;
    const stay = 1000 + random() * 4000;
    if (kind === "frozen") {
      const raw = rawSocket(socket);
      const engine = socket.io.engine;
      raw.pause(); // stops reading: the server's pings and writes back up
      engine._resetPingTimeout = () => {}; // and this side never gives up on its own
      clearTimeout(engine._pingTimeoutTimer);
      setTimeout(() => { raw.resetAndDestroy(); finish(false); }, FROZEN_MS);
      return;
    }
    setTimeout(() => {
      if (kind === "dropped") {
        const raw = rawSocket(socket);
        socket.io.engine.removeAllListeners(); // the client side goes quiet at once
        raw.resetAndDestroy(); // RST: no close frame, no FIN
      } else socket.close();
      finish(false);
    }, stay);
  });
}

function report() {
  const sorted = latencies.slice().sort((a, b) => a - b);
  latencies = [];
  const pick = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { received: sorted.length, p50: pick(0.5), p99: pick(0.99), max: sorted[sorted.length - 1] };
}

async function main() {
  const batch = 100;
  for (let i = 0; i < steadyCount; i += batch) {
    steady.push(...(await Promise.all(tokens.slice(i, Math.min(i + batch, steadyCount)).map(connectSteady))));
  }
  console.log(JSON.stringify({ connected: steady.length }));
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line === "start") {
      const began = now();
      ticker = setInterval(() => {
        const due = Math.floor(((now() - began) / 1000) * rate);
        while (stats.started < due) churnOne();
      }, 10);
      console.log(JSON.stringify({ started: true }));
    } else if (line === "stats") {
      console.log(JSON.stringify({ ...stats, live, steady: steady.filter((s) => s.connected).length }));
    } else if (line === "report") {
      console.log(JSON.stringify(report()));
    } else if (line === "stop") {
      clearInterval(ticker);
      const deadline = now() + FROZEN_MS + 10_000;
      while (live > 0 && now() < deadline) await new Promise((r) => setTimeout(r, 100));
      console.log(JSON.stringify({ stopped: true, live }));
    } else if (line === "quit") break;
  }
  steady.forEach((s) => s.close());
  process.exit(0);
}
main().catch((err) => { console.log(JSON.stringify({ error: String(err && err.message || err) })); process.exit(1); });
