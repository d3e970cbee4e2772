// The reference's publisher: @socket.io/redis-emitter from a separate process, as a worker would.
"use strict";
const fs = require("fs");
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

const [redisUrl, channel, usersFile, clients, rate, seconds] = process.argv.slice(2);
const users = fs.readFileSync(usersFile, "utf8").split("\n").filter(Boolean).slice(0, Number(clients));
const now = () => performance.timeOrigin + performance.now();

async function main() {
  const client = createClient({ url: redisUrl });
  await client.connect();
  const emitter = new Emitter(client, { key: channel });
  const total = Math.round(Number(rate) * Number(seconds));
  const start = now();
  const took = [];
  for (let i = 0; i < total; i++) {
    const due = start + (i * 1000) / Number(rate);
    const wait = due - now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const user = users[i % users.length];
    const began = now();
    emitter.to(`user:${user}`).emit("activity", {
      activity: { id: `bench-${i}`, type: "bench", message: "bench", data: { sent_at: now() } },
      event_id: `${Date.now()}-${i}`, ts: new Date().toISOString(),
    });
    took.push(now() - began);  // the emitter does not wait for Redis: this is its CPU time
  }
  await new Promise((r) => setTimeout(r, 200));
  await client.quit();
  took.sort((a, b) => a - b);
  console.log(JSON.stringify({ published: total, publish_p50: took[total >> 1], publish_p99: took[Math.floor(total * 0.99)] }));
}
main();
