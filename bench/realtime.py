"""Socket.IO delivery benchmark: our server vs the reference (Node socket.io 4 + Redis adapter).

For each server configuration, on loopback, with its own database and Redis namespace:
  memory   5,000 idle authenticated connections: server RSS delta / N
  latency  1,000 connected clients, events published from a separate process at --rate/s,
           each to one user's room: publish -> client callback p50/p99/max
  cpu      server CPU time during the latency run / events delivered
Both servers are driven by the same client (Node socket.io-client in one process, offering
permessage-deflate as browsers do). Needs node + npm (installs bench/peers/socketio-node on first
run).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/realtime.py [--quick]
    .venv/bin/python -m bench.realtime --repeat 5 --only python-shipped node-reference
    .venv/bin/python bench/realtime.py publish ...   (internal: the worker-like publisher)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "bench" / "peers" / "socketio-node"
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
SECRET = "bench-secret-" + "0123456789abcdef" * 3

VARIANTS = {
    # name: (description, environment of our server)
    "python-defaults": ("deflate accepted (aiohttp's default), no GC tuning",
                        {"SOCKETIO_COMPRESSION": "true", "GC_TUNING": "false"}),
    "python-no-deflate": ("deflate off, no GC tuning",
                          {"SOCKETIO_COMPRESSION": "false", "GC_TUNING": "false"}),
    "python-shipped": ("deflate off, GC tuned (the shipped settings)",
                       {"SOCKETIO_COMPRESSION": "false", "GC_TUNING": "true"}),
}


# ------------------------------------------------------------------ process measurements

def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        print(f"server {server.pid} ignored SIGTERM for 20 s; killing it", flush=True)
        server.kill()
        server.wait(5)


async def gc_pauses(port: int) -> dict[str, float]:
    """Collector passes so far, from our server's /metrics: {"gen2_count": n, "gen2_ms": t, ...}."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    figures: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, unit in (("_count", "count"), ("_sum", "ms")):
            prefix = f"python_gc_pause_seconds{suffix}{{generation=\""
            if line.startswith(prefix):
                generation = line[len(prefix)]
                value = float(line.rsplit(" ", 1)[1])
                figures[f"gen{generation}_{unit}"] = value * 1000 if unit == "ms" else value
    return figures


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


# ------------------------------------------------------------------ the two servers

@dataclass
class Run:
    name: str
    description: str
    figures: dict = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = uuid.uuid4().hex[:8]
        self.admin_url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
        self.redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        self.db_name = f"lustify_bench_{self.tag}"
        self.database_url = self.admin_url.rsplit("/", 1)[0] + "/" + self.db_name
        self.namespace = f"lustify-bench-{self.tag}"
        self.work = Path(tempfile.mkdtemp(prefix="lustify-bench-"))
        self.tokens_file = self.work / "tokens.txt"
        self.users_file = self.work / "users.txt"

    # setup / teardown

    async def prepare(self) -> None:
        import asyncpg

        from db.migrate import upgrade
        from server.auth.tokens import issue_access_token

        conn = await asyncpg.connect(self.admin_url)
        await conn.execute(f'CREATE DATABASE "{self.db_name}"')
        await conn.close()
        await asyncio.to_thread(upgrade, "postgresql+asyncpg://" + self.database_url.split("://", 1)[1])
        n = max(self.args.idle, self.args.clients)
        ids = [uuid.uuid4() for _ in range(n)]
        conn = await asyncpg.connect(self.database_url)
        await conn.executemany(
            "INSERT INTO users (id, email, password_hash, date_of_birth, email_verified) "
            "VALUES ($1, $2, 'x', $3, true)",
            [(i, f"bench-{i}@example.com", date(1990, 1, 1)) for i in ids])
        await conn.executemany("INSERT INTO user_credits (user_id) VALUES ($1)", [(i,) for i in ids])
        await conn.close()
        self.users_file.write_text("\n".join(map(str, ids)) + "\n")
        self.tokens_file.write_text("\n".join(
            issue_access_token(user_id=i, token_version=0, secret=SECRET, ttl=7200) for i in ids) + "\n")
        if not (NODE_DIR / "node_modules").exists():
            npm = await asyncio.create_subprocess_exec(
                "npm", "ci" if (NODE_DIR / "package-lock.json").exists() else "install",
                "--no-audit", "--no-fund", "--silent", cwd=NODE_DIR)
            if await npm.wait() != 0:
                raise RuntimeError("npm install failed in bench/node")

    async def cleanup(self) -> None:
        import asyncpg
        from redis.asyncio import Redis

        conn = await asyncpg.connect(self.admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        await conn.close()
        redis = Redis.from_url(self.redis_url)
        async for key in redis.scan_iter(match=f"{self.namespace}*", count=1000):
            await redis.delete(key)
        await redis.aclose()
        shutil.rmtree(self.work, ignore_errors=True)

    def channel(self, run: str) -> str:
        return f"{self.namespace}:{run}"

    # servers

    def start_python(self, run: str, env_overrides: dict[str, str], port: int) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))}
        env.update({
            "APP_ENV": "development", "HOST": "127.0.0.1", "PORT": str(port),
            "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
            "REDIS_NAMESPACE": self.channel(run), "JWT_SECRET": SECRET, "LOG_LEVEL": "WARNING",
            "DATA_DIR": str(self.work / "data"), "RATE_LIMIT_ENABLED": "false", **env_overrides,
        })
        return subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env,
                                cwd=self.work, stdout=subprocess.DEVNULL)

    def start_node(self, run: str, port: int) -> subprocess.Popen:
        return subprocess.Popen(
            ["node", str(NODE_DIR / "server.js"), str(port), self.redis_url,
             f"{self.channel(run)}:socketio", SECRET],
            cwd=NODE_DIR, stdout=subprocess.DEVNULL)

    def start_server(self, run: str, env: dict[str, str] | None, port: int) -> subprocess.Popen:
        return self.start_node(run, port) if env is None else self.start_python(run, env, port)

    # the driver (Node socket.io-client)

    async def driver(self, url: str, count: int) -> Driver:
        driver, ready = await Driver.start("driver.js", url, self.tokens_file, count)
        if ready.get("connected") != count:
            raise RuntimeError(f"driver: {ready}")
        return driver

    # the publishers

    async def start_publisher(self, run: str, env: dict[str, str] | None, *, rate: float | None = None,
                              seconds: float | None = None, clients: int | None = None,
                              path: str | None = None) -> asyncio.subprocess.Process:
        """The publisher process (Node's emitter for the reference, ours otherwise), started."""
        seconds_, rate_ = str(seconds or self.args.seconds), str(rate or self.args.rate)
        clients_ = str(clients or self.args.clients)
        if env is None:
            cmd = ["node", str(NODE_DIR / "emitter.js"), self.redis_url,
                   f"{self.channel(run)}:socketio", str(self.users_file), clients_, rate_, seconds_]
        else:
            cmd = [sys.executable, __file__, "publish", self.database_url, self.redis_url,
                   self.channel(run), str(self.users_file), clients_, rate_, seconds_,
                   path or self.args.path]
        return await asyncio.create_subprocess_exec(*cmd, cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE)

    @staticmethod
    async def publisher_result(proc: asyncio.subprocess.Process) -> dict:
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"publisher failed: {out!r}")
        return json.loads(out.decode().strip().splitlines()[-1])

    async def publish(self, run: str, env: dict[str, str] | None) -> dict:
        """Run the publisher process; returns what it measured of its own publish calls."""
        return await self.publisher_result(await self.start_publisher(run, env))

    # the measurements

    async def memory(self, name: str, env: dict[str, str] | None) -> dict:
        port = free_port()
        server = self.start_server(f"{name}-mem", env, port)
        try:
            await wait_listening(port, server)
            warm = await self.driver(f"http://127.0.0.1:{port}", 20)  # first-use allocations
            await warm.quit()
            await asyncio.sleep(2)
            before = rss_kb(server.pid)
            driver = await self.driver(f"http://127.0.0.1:{port}", self.args.idle)
            await asyncio.sleep(5)
            after = rss_kb(server.pid)
            await driver.quit()
            return {"rss_before_mb": before / 1024, "rss_after_mb": after / 1024,
                    "kb_per_connection": (after - before) / self.args.idle}
        finally:
            stop_server(server)

    async def latency(self, name: str, env: dict[str, str] | None) -> dict:
        port = free_port()
        server = self.start_server(f"{name}-lat", env, port)
        try:
            await wait_listening(port, server)
            driver = await self.driver(f"http://127.0.0.1:{port}", self.args.clients)
            await asyncio.sleep(2)
            await driver.command("reset")
            gc_before = await gc_pauses(port) if env is not None else {}
            cpu_before = cpu_seconds(server.pid)
            published = await self.publish(f"{name}-lat", env)
            await asyncio.sleep(1)
            cpu_after = cpu_seconds(server.pid)
            gc_after = await gc_pauses(port) if env is not None else {}
            stats = await driver.command("report")
            stats.update({k: v for k, v in published.items() if k.startswith("publish_")})
            stats["gc"] = {key: round(gc_after[key] - gc_before.get(key, 0), 2) for key in gc_after}
            await driver.quit()
            stats["events"] = int(self.args.rate * self.args.seconds)
            stats["server_cpu_s"] = cpu_after - cpu_before
            stats["cpu_us_per_event"] = (cpu_after - cpu_before) / max(stats["received"], 1) * 1e6
            return stats
        finally:
            stop_server(server)


class Driver:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, script: str, *args: object, timeout: float = 300,
                    limit: int = 2**16) -> tuple[Driver, dict]:
        """A Node driver script of bench/peers/socketio-node, and the first line it reports."""
        proc = await asyncio.create_subprocess_exec(
            "node", str(NODE_DIR / script), *map(str, args), cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=limit)
        driver = cls(proc)
        return driver, await driver.read(timeout=timeout)

    async def read(self, timeout: float = 60) -> dict:
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("driver exited")
        return json.loads(line)

    async def command(self, text: str) -> dict:
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read()

    async def quit(self) -> None:
        self.proc.stdin.write(b"quit\n")
        await self.proc.stdin.drain()
        await asyncio.wait_for(self.proc.wait(), 60)


# ------------------------------------------------------------------ the worker-like publisher

async def publish_events(database_url: str, redis_url: str, namespace: str, users_file: str,
                         clients: int, rate: float, seconds: float, path: str) -> None:
    """Commit events through the outbox (a transaction each, as services do), or publish
    already-numbered ones straight to Redis (`direct`: the delivery path alone)."""
    from db.session import transaction
    from server.config import Settings
    from server.realtime import outbox
    from server.realtime.events import ActivityPosted
    from server.resources import open_resources

    settings = Settings(_env_file=None, database_url=database_url, redis_url=redis_url,
                        redis_namespace=namespace, jwt_secret=SECRET)
    users = [uuid.UUID(u) for u in Path(users_file).read_text().split()[:clients]]  # noqa: ASYNC240
    total = round(rate * seconds)
    took: list[float] = []
    seqs: dict[uuid.UUID, int] = {}
    # Each event is its own task, started at its due time: a slow commit does not hold back
    # the next (as in a worker running many jobs); at most 64 in flight. Direct publishes number
    # the events here, so they go one at a time (in order).
    slots = asyncio.Semaphore(64 if path == "outbox" else 1)
    late = 0

    async def one(i: int) -> None:
        user = users[i % len(users)]
        async with slots:
            began = time.perf_counter()
            # sent_at is taken before the transaction opens: the figure is "transaction start ->
            # client", a little more than commit -> client.
            event = ActivityPosted(activity={"id": f"bench-{i}", "type": "bench", "message": "bench",
                                             "data": {"sent_at": time.time() * 1000}})
            if path == "outbox":
                async with transaction(resources.sessionmaker) as session:
                    outbox.emit(session, user, event)
            else:
                seqs[user] = seqs.get(user, 0) + 1
                payload = {**event.model_dump(mode="json"), "event_id": seqs[user], "ts": outbox.now_ts()}
                await resources.publisher.publish_durable(user, [(seqs[user], event.name, payload)])
            took.append((time.perf_counter() - began) * 1000)

    async with open_resources(settings) as resources:
        if path == "direct":  # numbered on from the users' outbox history (an earlier run's)
            async with resources.reader.acquire() as conn:
                seqs.update(await conn.fetch("SELECT user_id, event_seq FROM user_credits "
                                             "WHERE user_id = ANY($1)", users))
        tasks = set()
        start = time.time()
        for i in range(total):
            wait = start + i / rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.05:
                late += 1
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.time() - start
        await asyncio.sleep(0.2)
    took.sort()
    print(json.dumps({"published": total, "publish_p50": took[len(took) // 2],
                      "publish_p99": took[int(len(took) * 0.99)], "publish_rate": total / elapsed,
                      "publish_late": late}))


# ------------------------------------------------------------------ main

def ratio_cell(run: Run, node: Run | None, key: str, fmt: str) -> str:
    """A figure of a run, with its ratio to Node's in the same run."""
    value = run.figures.get(key)
    if value is None:
        return "-"
    text = format(value, fmt)
    if node is not None and run is not node and node.figures.get(key):
        text += f" ({value / node.figures[key]:.2f}x)"
    return text


def table(runs: list[Run]) -> str:
    node = next((r for r in runs if r.name == "node-reference"), None)
    rows = ["| server | p50 ms | p99 ms | max ms | CPU µs/event | KB/connection |",
            "|---|---|---|---|---|---|"]

    def cell(run: Run, key: str, fmt: str) -> str:
        return ratio_cell(run, node, key, fmt)

    for run in runs:
        rows.append(f"| {run.name}: {run.description} | {cell(run, 'p50', '.2f')} | {cell(run, 'p99', '.2f')} | "
                    f"{cell(run, 'max', '.1f')} | {cell(run, 'cpu_us_per_event', '.0f')} | "
                    f"{cell(run, 'kb_per_connection', '.1f')} |")
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> None:
    bench = Bench(args)
    print(f"bench: {args.clients} clients, {args.rate:g} events/s for {args.seconds:g}s, our events via {args.path}, "
          f"{args.idle} idle connections, {args.repeat} interleaved repeats; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    plan = [Run(n, d) for n, (d, _) in VARIANTS.items() if n in args.only or not args.only]
    if not args.only or "node-reference" in args.only:
        plan.append(Run("node-reference", "socket.io 4.8 + redis-adapter, library defaults"))
    envs = {name: env for name, (_, env) in VARIANTS.items()}
    samples: dict[str, list[dict]] = {run.name: [] for run in plan}
    try:
        await bench.prepare()
        if not args.skip_memory:
            for run in plan:
                run.figures.update(await bench.memory(run.name, envs.get(run.name)))
                print(f"{run.name} memory: {json.dumps(run.figures)}", flush=True)
        # Interleaved so that whatever else the machine does spreads over every server alike.
        for repeat in range(0 if args.skip_latency else args.repeat):
            for run in plan:
                lat = await bench.latency(run.name, envs.get(run.name))
                samples[run.name].append(lat)
                print(f"{run.name} latency #{repeat + 1}: {json.dumps(lat)}", flush=True)
    finally:
        await bench.cleanup()
    for run in plan:
        for key in ("p50", "p99", "max", "cpu_us_per_event"):
            if samples[run.name]:
                run.figures[key] = statistics.median(s[key] for s in samples[run.name])
    print(f"\nmedians of {args.repeat} runs; load average after: {os.getloadavg()[0]:.2f}")
    print(table(plan))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--only", nargs="*", default=[],
                        help=f"runs to do: {', '.join(VARIANTS)}, node-reference")
    parser.add_argument("--quick", action="store_true", help="200 clients, 500 idle, 5 s")
    parser.add_argument("--path", choices=["outbox", "direct"], default="outbox",
                        help="our events: committed through the outbox (default), or published "
                             "straight to Redis already numbered (the delivery path alone)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.idle, args.seconds, args.repeat = 200, 500, 5, 1
    return args


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        db, redis_url, namespace, users, clients, rate, seconds, path = sys.argv[2:10]
        asyncio.run(publish_events(db, redis_url, namespace, users, int(clients), float(rate),
                                   float(seconds), path))
    else:
        asyncio.run(main(parse()))
