// The load driver for both servers: N socket.io-client connections in one process, offering
// permessage-deflate as browsers do. Reports latency of `activity` events (now - data.sent_at).
"use strict";
const fs = require("fs");
const readline = require("readline");
const { io } = require("socket.io-client");

const [url, tokensFile, countArg] = process.argv.slice(2);
const tokens = fs.readFileSync(tokensFile, "utf8").split("\n").filter(Boolean).slice(0, Number(countArg));
const now = () => performance.timeOrigin + performance.now();
const sockets = [];
let latencies = [];

function connectOne(token) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { transports: ["websocket"], auth: { token }, reconnection: false, forceNew: true });
    socket.on("activity", (payload) => latencies.push(now() - payload.activity.data.sent_at));
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(err));
  });
}

async function connectAll() {
  const batch = 100;
  for (let i = 0; i < tokens.length; i += batch) {
    sockets.push(...(await Promise.all(tokens.slice(i, i + batch).map(connectOne))));
  }
}

function report() {
  const sorted = latencies.slice().sort((a, b) => a - b);
  const pick = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { received: sorted.length, p50: pick(0.5), p99: pick(0.99), max: sorted[sorted.length - 1] };
}

async function main() {
  await connectAll();
  console.log(JSON.stringify({ connected: sockets.length }));
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line === "reset") { latencies = []; console.log(JSON.stringify({ reset: true })); }
    else if (line === "report") console.log(JSON.stringify(report()));
    else if (line === "quit") break;
  }
  sockets.forEach((s) => s.close());
  process.exit(0);
}
main().catch((err) => { console.log(JSON.stringify({ error: String(err && err.message || err) })); process.exit(1); });
