"""Socket.IO at scale: 10,000 sockets on one process, a reconnect storm, three processes behind nginx.

Cases (our shipped server; Node socket.io 4.8 + Redis adapter in the same run where it has one):
  connect  N authenticated sockets opened at once from cold: time until all are connected,
           /health p99 meanwhile (polled every 20 ms), the load generator's own CPU; then
           memory per connection and delivery at --rate events/s (p50/p99/max, CPU per event)
  storm    N connected clients; the server gets SIGTERM and a new process takes the port while a
           worker-like publisher keeps committing events through the outbox: time until all are
           back, events committed in the gap, every event delivered once (counted per user),
           max PostgreSQL connections, a REST client's 5xx outside the restart window
  cluster  3 server processes behind the repository's nginx.conf, N clients through nginx,
           events from a separate publisher: delivery figures and CPU per process
Driven by one Node process of socket.io-client (bench/peers/socketio-node/scale.js).

    .venv/bin/python -m bench.realtime_scale [--quick] [--only connect storm cluster] [--no-node]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

import aiohttp
import asyncpg

from bench.realtime import (
    ROOT,
    VARIANTS,
    Bench,
    Driver,
    cpu_seconds,
    free_port,
    gc_pauses,
    rss_kb,
    stop_server,
    wait_listening,
)

SHIPPED = VARIANTS["python-shipped"][1]
CASES = ("connect", "storm", "cluster")
SERVERS = 3


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def listen_drops() -> int:
    """The machine's TcpExt ListenDrops: SYNs dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            return int(dict(zip(head.split(), values.split(), strict=True))["ListenDrops"])
    return -1


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


class ScaleDriver(Driver):
    """scale.js: N sockets in one Node process; JSON line per command."""

    @classmethod
    async def open(cls, url: str, tokens: Path, count: int, *, reconnect: bool,
                   inflight: int, timeout: float) -> tuple[ScaleDriver, dict]:
        driver, ready = await cls.start("scale.js", url, tokens, count, inflight, "1" if reconnect else "0",
                                        timeout, timeout=timeout + 30, limit=64 * 1024 * 1024)
        return driver, ready  # type: ignore[return-value]

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
        try:
            await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Watcher:
    """A polling loop (`_run`) that runs while the `with` block does."""

    task: asyncio.Task | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


class Probe(Watcher):
    """GET `path` every `every` seconds (one at a time); latencies and statuses with start times."""

    def __init__(self, url: str, token: str | None = None, every: float = 0.02) -> None:
        self.url, self.every = url, every
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.samples: list[tuple[float, float, int | str]] = []  # (start epoch s, ms, status)
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                began, t0 = time.time(), time.perf_counter()
                try:
                    async with http.get(self.url, headers=self.headers) as resp:
                        await resp.read()
                        status: int | str = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                took = time.perf_counter() - t0
                self.samples.append((began, took * 1000, status))
                await asyncio.sleep(max(0.0, self.every - took))


    def figures(self, since: float = 0.0, until: float = float("inf")) -> dict:
        ok = [ms for t, ms, s in self.samples if since <= t <= until and s == 200]
        other: dict[str, int] = {}
        for t, _, s in self.samples:
            if since <= t <= until and s != 200:
                other[str(s)] = other.get(str(s), 0) + 1
        return {"n": len(ok), "p50": pct(ok, 0.5), "p99": pct(ok, 0.99), "max": max(ok, default=0.0),
                "not_ok": other}


class PgPeak(Watcher):
    """Polls pg_stat_activity for the bench database: the most connections seen."""

    def __init__(self, admin_url: str, db_name: str) -> None:
        self.admin_url, self.db_name, self.peak = admin_url, db_name, 0
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            while True:
                n = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", self.db_name)
                self.peak = max(self.peak, n)
                await asyncio.sleep(0.05)
        finally:
            await conn.close()



class Scale:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        # bench.realtime's Bench: database, users and tokens, servers, publishers.
        self.bench = Bench(argparse.Namespace(idle=args.clients, clients=args.clients, rate=args.rate,
                                              seconds=args.seconds, path=args.path))
        self.results: dict[str, dict] = {}

    async def seed(self) -> None:
        """The plans, which authenticated REST reads (the profile) need."""
        from server.cli import _seed
        from server.config import Settings

        await _seed(Settings(_env_file=None, database_url=self.bench.database_url,
                             jwt_secret="x" * 48))

    def tokens(self) -> list[str]:
        return self.bench.tokens_file.read_text().split()

    async def driver(self, url: str, *, reconnect: bool) -> tuple[ScaleDriver, dict]:
        return await ScaleDriver.open(url, self.bench.tokens_file, self.args.clients, reconnect=reconnect,
                                       inflight=self.args.inflight, timeout=self.args.connect_timeout)

    # ---------------------------------------------------------------- case 1 + 2

    async def connect(self, name: str, env: dict[str, str] | None) -> dict:
        """Cold connect of N sockets, then memory per connection and delivery at --rate."""
        port = free_port()
        server = self.bench.start_server(f"{name}-connect", env, port)
        figures: dict = {}
        try:
            await wait_listening(port, server)
            await asyncio.sleep(1)  # let the process settle after start (imports, pools)
            rss_before = rss_kb(server.pid)
            # Node's reference answers no /health (its http server leaves other paths hanging).
            probe = Probe(f"http://127.0.0.1:{port}/health")
            with probe if env is not None else contextlib.nullcontext():
                cpu0, began, drops = cpu_seconds(server.pid), time.time(), listen_drops()
                driver, ready = await self.driver(f"http://127.0.0.1:{port}", reconnect=True)
                ended = time.time()
                figures["listen_drops"] = listen_drops() - drops
                figures["connect"] = ready
                figures["connect_s"] = ready["connect_ms"] / 1000
                figures["connect_server_cpu_s"] = cpu_seconds(server.pid) - cpu0
                figures["driver_cpu_connect_s"] = driver.cpu()
                figures["driver_cpu_connect_pct"] = driver.cpu() / max(ended - began, 1e-9) * 100
                await asyncio.sleep(0.3)
            if env is not None:
                figures["health"] = probe.figures(began, ended)
            if ready["connected"] != self.args.clients:
                raise RuntimeError(f"{name}: only {ready['connected']} of {self.args.clients} connected")
            try:
                await asyncio.sleep(5)
                figures["kb_per_connection"] = (rss_kb(server.pid) - rss_before) / self.args.clients
                await driver.command("reset")
                gc0 = await gc_pauses(port) if env is not None else {}
                cpu0, dcpu0, t0 = cpu_seconds(server.pid), driver.cpu(), time.time()
                spy = None
                if self.args.profile and env is not None:  # py-spy, collapsed stacks of the delivery run
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(server.pid),
                         "-d", str(int(self.args.seconds)), "-r", "200", "-f", "raw", "-o", self.args.profile],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                published = await self.bench.publish(f"{name}-connect", env)
                if spy is not None:
                    spy.wait(30)
                await asyncio.sleep(1)
                cpu1, dcpu1, t1 = cpu_seconds(server.pid), driver.cpu(), time.time()
                stats = await driver.command("report")
                figures.update({k: stats[k] for k in ("p50", "p99", "max", "received")})
                figures["publisher"] = published
                if env is not None:  # collector passes in the window (count, total ms per generation)
                    gc1 = await gc_pauses(port)
                    figures["gc"] = {k: round(gc1[k] - gc0.get(k, 0), 1) for k in gc1}
                figures["cpu_us_per_event"] = (cpu1 - cpu0) / max(stats["received"], 1) * 1e6
                figures["server_cpu_pct"] = (cpu1 - cpu0) / (t1 - t0) * 100
                figures["driver_cpu_pct"] = (dcpu1 - dcpu0) / (t1 - t0) * 100
            finally:
                await driver.quit()
            return figures
        finally:
            stop_server(server)

    # ---------------------------------------------------------------- case 3

    async def storm(self) -> dict:
        name, n = "storm", self.args.clients
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = self.bench.start_server(name, SHIPPED, port)
        figures: dict = {}
        try:
            await wait_listening(port, server)
            driver, ready = await self.driver(base, reconnect=True)
            if ready["connected"] != n:
                raise RuntimeError(f"storm: only {ready['connected']} of {n} connected")
            try:
                with (Probe(base + "/api/auth/profile", token=self.tokens()[0], every=0.05) as rest,
                      PgPeak(self.bench.admin_url, self.bench.db_name) as pg):
                    publisher = await self.bench.start_publisher(
                        name, SHIPPED, rate=self.args.storm_rate, seconds=self.args.storm_seconds, clients=n,
                        path="outbox")
                    await asyncio.sleep(self.args.storm_seconds / 4)
                    term, drops = time.time(), listen_drops()
                    stop_server(server)  # SIGTERM; the process drains and exits
                    exited = time.time()
                    server = self.bench.start_server(name, SHIPPED, port)
                    await wait_listening(port, server)
                    listening = time.time()
                    deadline = time.monotonic() + self.args.connect_timeout
                    while True:
                        report = await driver.command("report")
                        if report["connected"] == n and report["all_back_at"]:
                            break
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"storm: clients not back: {report}")
                        await asyncio.sleep(0.2)
                    back = report["all_back_at"] / 1000
                    figures["listen_drops"] = listen_drops() - drops
                    published = await self.bench.publisher_result(publisher)
                    await asyncio.sleep(3)  # the last events' delivery
                    rest_outside = rest.figures(0, term)
                    after = rest.figures(listening, float("inf"))
                    during = rest.figures(term, listening)
                counts = (await driver.command("counts"))["counts"]
                report = await driver.command("report")
            finally:
                await driver.quit()
            conn = await asyncpg.connect(self.bench.database_url)
            try:
                seqs = dict(await conn.fetch("SELECT user_id::text, event_seq FROM user_credits"))
                gap_events = await conn.fetchval(
                    "SELECT count(*) FROM user_events WHERE created_at >= to_timestamp($1) "
                    "AND created_at <= to_timestamp($2)", term, back)
            finally:
                await conn.close()
            users = self.bench.users_file.read_text().split()[:n]
            committed = sum(seqs.get(u, 0) for u in users)
            received = sum(c[0] for c in counts)
            missing = sum(max(0, seqs.get(u, 0) - c[0]) for u, c in zip(users, counts, strict=True))
            figures.update({
                "clients": n, "disconnects": report["disconnects"], "min_connected": report["min_connected"],
                "sigterm_to_exit_s": exited - term, "sigterm_to_listening_s": listening - term,
                "sigterm_to_all_back_s": back - term, "listening_to_all_back_s": back - listening,
                "committed": committed, "committed_in_gap": gap_events, "delivered": received,
                "missing": missing, "duplicates": sum(c[1] for c in counts), "holes": sum(c[2] for c in counts),
                "pg_peak_connections": pg.peak,
                "pg_limit": "server 10 reader + 10+10 ORM; publisher 10+10 ORM (+1 reader)",
                "rest_before": rest_outside, "rest_restart_window": during, "rest_after_restart": after,
                "publisher": published,
            })
            return figures
        finally:
            stop_server(server)

    # ---------------------------------------------------------------- case 4

    def nginx_conf(self, prefix: Path, listen: int, upstreams: list[int]) -> Path:
        """The repository's nginx.conf with the bench's ports, pid and paths."""
        conf = (ROOT / "nginx.conf").read_text()
        servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstreams)
        conf = re.sub(r"^\s*server app:\d+;\n", servers, conf, flags=re.M)
        # Every bench client comes from 127.0.0.1, so ip_hash would send all of them to one
        # process; hashing the client port spreads them as many addresses would.
        conf = conf.replace("ip_hash;", "hash $remote_addr$remote_port;")
        conf = re.sub(r"^pid .*;", f"pid {prefix}/nginx.pid;", conf, flags=re.M)
        conf = re.sub(r"listen 80;", f"listen 127.0.0.1:{listen};", conf)
        conf = conf.replace("http {", "error_log " + str(prefix / "error.log") + " warn;\nhttp {\n"
                            f"    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;\n"
                            f"    fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi;\n"
                            f"    scgi_temp_path {prefix}/scgi;", 1)
        path = prefix / "nginx.conf"
        path.write_text(conf)
        return path

    async def cluster(self, name: str, env: dict[str, str] | None) -> dict:
        prefix = Path(tempfile.mkdtemp(prefix="lustify-nginx-"))
        ports = [free_port() for _ in range(SERVERS)]
        listen = free_port()
        servers: list[subprocess.Popen] = []
        nginx: subprocess.Popen | None = None
        figures: dict = {}
        try:
            for port in ports:
                servers.append(self.bench.start_server(f"{name}-cluster", env, port))
            for port, proc in zip(ports, servers, strict=True):
                await wait_listening(port, proc)
            conf = self.nginx_conf(prefix, listen, ports)
            nginx = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                                     stderr=subprocess.DEVNULL)
            await wait_listening(listen, nginx)
            driver, ready = await self.driver(f"http://127.0.0.1:{listen}", reconnect=False)
            try:
                if ready["connected"] != self.args.clients:
                    raise RuntimeError(f"cluster: {ready}")
                figures["connect_s"] = ready["connect_ms"] / 1000
                if env is not None:
                    figures["sockets_per_process"] = [await socket_count(p) for p in ports]
                procs = {f"server{i + 1}": s.pid for i, s in enumerate(servers)}
                procs["nginx"] = nginx.pid
                await asyncio.sleep(3)
                # idle: pings and heartbeats only
                idle0, t0 = self.cpu_of(procs), time.time()
                await asyncio.sleep(self.args.idle_seconds)
                idle1, t1 = self.cpu_of(procs), time.time()
                figures["idle_cpu_pct"] = {k: (idle1[k] - idle0[k]) / (t1 - t0) * 100 for k in procs}
                await driver.command("reset")
                publisher = await self.bench.start_publisher(f"{name}-cluster", env, rate=self.args.cluster_rate,
                                                             clients=self.args.clients)
                pub_cpu = 0.0
                cpu0, dcpu0, t0 = self.cpu_of(procs), driver.cpu(), time.time()
                while publisher.returncode is None:
                    with contextlib.suppress(OSError):
                        pub_cpu = cpu_seconds(publisher.pid)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(publisher.wait()), 0.2)
                published = await self.bench.publisher_result(publisher)
                cpu1, dcpu1, t1 = self.cpu_of(procs), driver.cpu(), time.time()
                await asyncio.sleep(1)
                stats = await driver.command("report")
            finally:
                await driver.quit()
            wall = t1 - t0
            figures.update({k: stats[k] for k in ("p50", "p99", "max", "received", "connected", "disconnects")})
            figures["events"] = round(self.args.cluster_rate * self.args.seconds)
            errors = (prefix / "error.log").read_text().splitlines() if (prefix / "error.log").exists() else []
            figures["nginx_errors"] = len(errors)
            figures["nginx_error_sample"] = errors[-3:]
            figures["publisher"] = published
            figures["cpu_pct"] = {k: (cpu1[k] - cpu0[k]) / wall * 100 for k in procs}
            figures["cpu_pct"]["publisher"] = pub_cpu / wall * 100  # (its last reading; startup included)
            figures["driver_cpu_pct"] = (dcpu1 - dcpu0) / wall * 100
            server_cores = sum(figures["cpu_pct"][f"server{i + 1}"] for i in range(SERVERS)) / 100
            figures["server_cores"] = server_cores
            figures["cpu_us_per_event"] = server_cores * wall / max(stats["received"], 1) * 1e6
            return figures
        finally:
            if nginx is not None:
                nginx.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    nginx.wait(10)
            for proc in servers:
                stop_server(proc)
            shutil.rmtree(prefix, ignore_errors=True)

    @staticmethod
    def cpu_of(procs: dict[str, int]) -> dict[str, float]:
        out = {}
        for key, pid in procs.items():
            total = cpu_seconds(pid)
            if key == "nginx":
                total += sum(cpu_seconds(c) for c in children(pid))
            out[key] = total
        return out


async def socket_count(port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^socketio_connections (\S+)$", text, flags=re.M)
    return int(float(match.group(1))) if match else -1


# -------------------------------------------------------------------- report

def ratio(ours: float | None, node: float | None) -> str:
    if ours is None:
        return "-"
    return f"{ours:.2f}" + (f" ({ours / node:.2f}x)" if node else "")


def table(results: dict[str, dict]) -> str:
    rows = ["| case | figure | ours | Node socket.io 4.8 |", "|---|---|---|---|"]
    ours, node = results.get("connect-python"), results.get("connect-node")
    if ours:
        n = node or {}
        for key, label in (("connect_s", "all connected from cold, s"),
                           ("health_p99", "/health p99 while connecting, ms"),
                           ("driver_cpu_connect_pct", "load generator CPU while connecting, % of a core"),
                           ("kb_per_connection", "memory per connection, KB"),
                           ("p50", "delivery p50, ms"), ("p99", "delivery p99, ms"), ("max", "delivery max, ms"),
                           ("cpu_us_per_event", "server CPU per event, µs"),
                           ("driver_cpu_pct", "load generator CPU while delivering, % of a core")):
            rows.append(f"| connect + delivery | {label} | {ratio(ours.get(key), n.get(key))} | "
                        f"{'-' if n.get(key) is None else format(n[key], '.2f')} |")
    storm = results.get("storm")
    if storm:
        for key, label in (("sigterm_to_exit_s", "SIGTERM -> old process exited, s"),
                           ("sigterm_to_all_back_s", "SIGTERM -> all clients back, s"),
                           ("committed_in_gap", "events committed in the gap"),
                           ("committed", "events committed in the run"), ("delivered", "delivered"),
                           ("missing", "missing"), ("duplicates", "duplicates"),
                           ("pg_peak_connections", "PostgreSQL connections, peak")):
            rows.append(f"| reconnect storm | {label} | {storm[key]:.2f} | no equivalent |"
                        if isinstance(storm[key], float) else
                        f"| reconnect storm | {label} | {storm[key]} | no equivalent |")
        rest = storm["rest_after_restart"]
        rows.append(f"| reconnect storm | REST after restart: p99 ms / non-200 | {rest['p99']:.1f} / "
                    f"{rest['not_ok'] or 0} | no equivalent |")
    ours, node = results.get("cluster-python"), results.get("cluster-node")
    if ours:
        n = node or {}
        for key, label in (("p50", "delivery p50, ms"), ("p99", "delivery p99, ms"), ("max", "delivery max, ms"),
                           ("cpu_us_per_event", "server CPU per event (3 processes), µs"),
                           ("server_cores", "server cores used (3 processes)")):
            rows.append(f"| 3 processes + nginx | {label} | {ratio(ours.get(key), n.get(key))} | "
                        f"{'-' if n.get(key) is None else format(n[key], '.2f')} |")
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in ours["cpu_pct"].items())
        rows.append(f"| 3 processes + nginx | CPU per process, % of a core | {cpu} | "
                    + (", ".join(f"{k} {v:.0f}%" for k, v in n["cpu_pct"].items()) if n else "-") + " |")
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> None:
    scale = Scale(args)
    results = scale.results
    print(f"realtime_scale: {args.clients} clients, {args.rate:g} events/s; cases {' '.join(args.only)}; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    def show(key: str, value: dict) -> None:
        results[key] = value
        print(f"{key}: {json.dumps(value, default=str)}", flush=True)

    try:
        await scale.bench.prepare()
        await scale.seed()
        if "connect" in args.only:
            fig = await scale.connect("python", SHIPPED)
            fig["health_p99"] = fig["health"]["p99"]
            show("connect-python", fig)
            if not args.no_node:
                fig = await scale.connect("node", None)
                fig["health_p99"] = None  # Node's server has no /health (it answers 404 at once)
                show("connect-node", fig)
        if "storm" in args.only:
            show("storm", await scale.storm())
        if "cluster" in args.only:
            show("cluster-python", await scale.cluster("python", SHIPPED))
            if not args.no_node:
                show("cluster-node", await scale.cluster("node", None))
    finally:
        await scale.bench.cleanup()
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(results))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2000, help="events/s in the delivery run")
    parser.add_argument("--seconds", type=float, default=20, help="length of each delivery run")
    parser.add_argument("--storm-rate", type=float, default=200)
    parser.add_argument("--storm-seconds", type=float, default=20)
    parser.add_argument("--cluster-rate", type=float, default=2000)
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--inflight", type=int, default=1000, help="handshakes outstanding at once")
    parser.add_argument("--connect-timeout", type=float, default=180)
    parser.add_argument("--only", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--path", choices=["direct", "outbox"], default="direct",
                        help="our events in the delivery runs: already numbered straight to Redis "
                             "(default: the delivery path alone, as Node's emitter), or committed "
                             "through the outbox; the storm always commits through the outbox")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy our server during the connect case's delivery run (collapsed stacks)")
    parser.add_argument("--no-node", action="store_true", help="skip the Node reference")
    parser.add_argument("--quick", action="store_true", help="500 clients, 200 events/s, 5 s runs")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.rate, args.seconds = 500, 200, 5
        args.storm_rate, args.storm_seconds, args.cluster_rate, args.idle_seconds = 50, 8, 200, 3
        args.connect_timeout = 60
    return args


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    asyncio.run(main(parse()))
