// The reference: socket.io 4 with the Redis adapter, doing what our server does on connect
// (verify the HS256 access JWT, join room user:{id}); library defaults otherwise.
"use strict";
const http = require("http");
const crypto = require("crypto");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const [port, redisUrl, channel, secret] = process.argv.slice(2);

function verify(token) {
  const [head, body, sig] = String(token || "").split(".");
  if (!sig) return null;
  const expected = crypto.createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  if (expected.length !== sig.length || !crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(sig))) return null;
  const claims = JSON.parse(Buffer.from(body, "base64url").toString());
  if (claims.typ !== "access" || claims.exp * 1000 < Date.now()) return null;
  return claims;
}

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub, { key: channel }) });
  io.use((socket, next) => {
    const claims = verify(socket.handshake.auth && socket.handshake.auth.token);
    if (!claims) return next(new Error("unauthorized"));
    socket.data.userId = claims.sub;
    next();
  });
  io.on("connection", (socket) => {
    socket.join(`user:${socket.data.userId}`);
    socket.on("ping", (data, ack) => typeof ack === "function" && ack({ ok: true, data: { pong: true } }));
  });
  httpServer.listen(Number(port), "127.0.0.1", () => console.log("listening"));
  process.on("SIGTERM", () => { io.close(); pub.quit(); sub.quit(); process.exit(0); });
}
main();
