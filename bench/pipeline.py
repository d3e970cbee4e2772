"""The generation pipeline at provider latencies: one worker process against the fake xAI API
(its own process on loopback) with images taking 5-15 s and videos 60-180 s to render.

Three phases, each printing its figures:
  drain     1,000 images queued before the worker starts: time to drain them, compared with
            the provider's pace (the same latencies scheduled on the worker's image slots),
            generations in flight, worker RSS and CPU
  mixed     500 videos rendering (polled every 5 s) while 300 images arrive at 20/s: images'
            enqueue -> start p50/p99 (they must not queue behind the videos), in flight
  fairness  a worker with 20 image slots; user A queues 200 images, then users B1..B5 queue
            one each, 5 s apart: each B's enqueue -> start against the image job time
Run: .venv/bin/python -m bench.pipeline [--phases drain,mixed,fairness] [--images 1000] [--videos 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from bench.harness import _dsn, own_database, server_process, settings_env
from server.auth.tokens import issue_access_token
from server.config import Settings
from server.embedded import free_port
from tests.support.funded_users import insert_funded_users

IMAGE_SECONDS, VIDEO_SECONDS = (5.0, 15.0), (60.0, 180.0)
DSN = ""  # the benchmark database
PROFILE = ""  # --profile FILE: py-spy's collapsed stacks of the drain phase's worker
SCALE = 1.0  # --scale: all provider latencies times this (a quick trial run)
CHAT_SECONDS, START_SECONDS, POLL_SECONDS = (0.3, 1.0), (0.5, 2.0), (0.05, 0.2)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], unit: str = "s") -> str:
    return (f"p50 {pct(values, 0.5):.2f} {unit}, p99 {pct(values, 0.99):.2f} {unit}, "
            f"max {max(values):.2f} {unit} (n={len(values)})")


def provider_pace(count: int, slots: int, *, scale: float, rounds: int = 200) -> float:
    """Seconds to make `count` images on `slots` slots with no overhead of ours: each takes the
    provider's image time and two chat calls (the prompt's enhancement, then its screening)."""
    ends = []
    for _ in range(rounds):
        free = [0.0] * min(slots, count)
        for _ in range(count):
            took = random.uniform(*IMAGE_SECONDS) + random.uniform(*CHAT_SECONDS) + random.uniform(*CHAT_SECONDS)
            heapq.heappush(free, heapq.heappop(free) + scale * took)
        ends.append(max(free))
    return statistics.mean(ends)


@contextlib.contextmanager
def fake_xai(api_key: str, scale: float) -> Iterator[str]:
    port = free_port()
    span = lambda pair: f"{pair[0] * scale},{pair[1] * scale}"  # noqa: E731
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fake_xai", "--port", str(port), "--api-key", api_key,
         "--chat", span(CHAT_SECONDS), "--image", span(IMAGE_SECONDS), "--video-start", span(START_SECONDS),
         "--video-render", span(VIDEO_SECONDS), "--poll", span(POLL_SECONDS)],
        stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@dataclass
class Worker:
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0  # wall clock, comparable with the database's timestamps
    rss_peak_kb: int = 0
    log: str = field(default_factory=lambda: tempfile.mktemp(prefix="lustify-bench-worker-", suffix=".log"))

    def start(self) -> Worker:
        command = [sys.executable, "-m", "server.cli", "worker"]
        if PROFILE:  # py-spy records the worker (its RSS and CPU figures are then py-spy's)
            spy = str(Path(sys.executable).with_name("py-spy"))
            command = [spy, "record", "--format", "raw", "-r", "100", "-o", PROFILE, "--", *command]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self.started = time.time()
        return self

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if PROFILE else signal.SIGTERM)  # py-spy writes on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Watch:
    """Samples generations in flight (processing rows, by kind) and the worker's RSS."""

    def __init__(self, url: str, worker: Worker) -> None:
        self.url, self.worker = url, worker
        self.peak: dict[str, int] = {"image": 0, "video": 0, "all": 0}
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        self.conn = await asyncpg.connect(self.url)  # its own: a connection runs one query at a time
        try:
            await self._sample()
        finally:
            await self.conn.close()

    async def _sample(self) -> None:
        while True:
            rows = await self.conn.fetch("SELECT type, count(*) AS n FROM generated_content "
                                         "WHERE status = 'processing' GROUP BY type")
            counts = {r["type"]: r["n"] for r in rows}
            for kind in ("image", "video"):
                self.peak[kind] = max(self.peak[kind], counts.get(kind, 0))
            self.peak["all"] = max(self.peak["all"], sum(counts.values()))
            with contextlib.suppress(OSError):
                self.worker.rss_peak_kb = max(self.worker.rss_peak_kb, self.worker.rss_kb())
            await asyncio.sleep(0.5)

    def __enter__(self) -> Watch:
        self.task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        self.task.cancel()


async def make_users(url: str, count: int, credits: int) -> list[uuid.UUID]:
    """Verified users on the Enterprise plan with `credits` each, the ledger equal to the balance."""
    return await insert_funded_users(_dsn(url), count, credits=credits, label="pipe")


class Client:
    def __init__(self, base: str, settings: Settings) -> None:
        self.base, self.secret = base, settings.jwt_secret.get_secret_value()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        self.limit = asyncio.Semaphore(64)

    async def generate(self, user: uuid.UUID, kind: str, prompt: str) -> str:
        token = issue_access_token(user_id=user, token_version=0, secret=self.secret, ttl=3600)
        body = {"prompt": prompt, **({"duration_seconds": 6} if kind == "video" else {})}
        async with self.limit, self.http.post(f"{self.base}/api/content/generate/{kind}", json=body,
                                              headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 202, (resp.status, await resp.text())
            return (await resp.json())["id"]

    async def close(self) -> None:
        await self.http.close()


async def rows_of(conn: asyncpg.Connection, ids: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id::text, type, status, attempts, extract(epoch FROM created_at)::float8 AS created, "
        "extract(epoch FROM started_at)::float8 AS started, extract(epoch FROM completed_at)::float8 AS completed "
        "FROM generated_content WHERE id = ANY($1::uuid[])", ids)


async def until_final(conn: asyncpg.Connection, ids: list[str], timeout: float) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await rows_of(conn, ids)
        if all(r["status"] in ("completed", "failed", "canceled") for r in rows):
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sum(r['status'] not in ('completed', 'failed') for r in rows)} not final")
        await asyncio.sleep(0.5)


async def wait_worker_ready(conn: asyncpg.Connection, base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            async with http.get(base + "/health") as resp:
                if (await resp.json())["checks"].get("worker") == "ok":
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the worker did not start")


async def phase_drain(env: dict[str, str], base: str, client: Client, conn, users, count: int) -> None:
    slots = int(env.get("WORKER_IMAGE_JOBS", 500))
    began = time.monotonic()
    ids = list(await asyncio.gather(*(client.generate(users[i % len(users)], "image", f"drain {i}")
                                      for i in range(count))))
    print(f"drain: {count} images queued over HTTP in {time.monotonic() - began:.1f} s, no worker running")
    worker = Worker(env).start()
    try:
        with Watch(DSN, worker) as watch:
            rows = await until_final(conn, ids, timeout=600)
        drained = max(r["completed"] for r in rows) - worker.started
        cpu = worker.cpu_seconds()
    finally:
        worker.stop()
    pace = provider_pace(count, slots, scale=SCALE)
    failed = sum(r["status"] != "completed" for r in rows)
    first = min(r["started"] for r in rows)
    full = sorted(r["started"] for r in rows)[min(slots, count) - 1]
    print(f"drain: worker start -> last image stored {drained:.1f} s; provider's pace on {slots} slots "
          f"{pace:.1f} s (+{drained - pace:.1f} s); failed {failed}")
    print(f"drain: worker start -> first image started {first - worker.started:.1f} s -> {min(slots, count)} "
          f"started {full - first:.1f} s later; first start -> last stored {max(r['completed'] for r in rows) - first:.1f} s")
    print(f"drain: in flight peak {watch.peak['image']}; worker RSS peak {worker.rss_peak_kb / 1024:.0f} MB; "
          f"worker CPU {cpu:.1f} s = {1000 * cpu / count:.1f} ms per image")
    runs = [r["completed"] - r["started"] for r in rows if r["completed"]]
    print(f"drain: start -> stored per image {spread(runs)} (provider {SCALE * IMAGE_SECONDS[0]:.1f}-"
          f"{SCALE * IMAGE_SECONDS[1]:.1f} s, plus prompt enhancement and its screening, "
          f"{SCALE * CHAT_SECONDS[0]:.2f}-{SCALE * CHAT_SECONDS[1]:.2f} s each)")


async def phase_mixed(env: dict[str, str], base: str, client: Client, conn, users, videos: int,
                      images: int) -> None:
    worker = Worker(env).start()
    try:
        await wait_worker_ready(conn, base)
        with Watch(DSN, worker) as watch:
            began = time.monotonic()
            video_ids = list(await asyncio.gather(*(client.generate(users[i % len(users)], "video", f"video {i}")
                                                    for i in range(videos))))
            print(f"mixed: {videos} videos queued in {time.monotonic() - began:.1f} s")
            for _ in range(240):  # until (nearly) all render at once
                if watch.peak["video"] >= videos * 0.95:
                    break
                await asyncio.sleep(0.5)
            image_ids = []
            for i in range(images):  # 20/s while the videos render
                image_ids.append(asyncio.create_task(client.generate(users[i % len(users)], "image", f"still {i}")))
                await asyncio.sleep(1 / 20)
            image_ids = list(await asyncio.gather(*image_ids))
            image_rows = await until_final(conn, image_ids, timeout=300)
            rendering = await conn.fetchval("SELECT count(*) FROM generated_content WHERE id = ANY($1::uuid[]) "
                                            "AND status = 'processing'", video_ids)
            video_rows = await until_final(conn, video_ids, timeout=900)
        cpu = worker.cpu_seconds()
    finally:
        worker.stop()
    waits = [r["started"] - r["created"] for r in image_rows]
    video_waits = [r["started"] - r["created"] for r in video_rows]
    print(f"mixed: in flight peak {watch.peak['all']} ({watch.peak['video']} videos, {watch.peak['image']} images); "
          f"{rendering} videos still rendering when the last image was stored")
    print(f"mixed: images' enqueue -> start while videos render: {spread(waits)}")
    print(f"mixed: videos' enqueue -> start: {spread(video_waits)}; start -> stored "
          f"{spread([r['completed'] - r['started'] for r in video_rows])}")
    failed = sum(r["status"] != "completed" for r in [*image_rows, *video_rows])
    retried = sum(r["attempts"] != 1 for r in [*image_rows, *video_rows])
    print(f"mixed: failed {failed}, more than one attempt {retried}; worker RSS peak "
          f"{worker.rss_peak_kb / 1024:.0f} MB, CPU {cpu:.1f} s")


async def phase_fairness(env: dict[str, str], base: str, client: Client, conn, users, backlog: int) -> None:
    narrow = {**env, "WORKER_IMAGE_JOBS": "20"}
    worker = Worker(narrow).start()
    try:
        await wait_worker_ready(conn, base)
        heavy, others = users[0], users[1:6]
        theirs = list(await asyncio.gather(*(client.generate(heavy, "image", f"backlog {i}") for i in range(backlog))))
        mine = []
        for i, user in enumerate(others):
            await asyncio.sleep(5)
            mine.append(await client.generate(user, "image", f"first {i}"))
        rows = await until_final(conn, mine, timeout=120)
        theirs_rows = await rows_of(conn, theirs)
    finally:
        worker.stop()
    done = [r["completed"] - r["started"] for r in theirs_rows if r["completed"]]
    waits = [r["started"] - r["created"] for r in rows]
    queued_then = [sum(1 for t in theirs_rows if not t["started"] or t["started"] > r["created"]) for r in rows]
    print(f"fairness: A queued {backlog} on 20 image slots; B1..B5 each queued one, 5 s apart, behind "
          f"{min(queued_then)}-{max(queued_then)} of A's waiting images")
    print(f"fairness: B's enqueue -> start {', '.join(f'{w:.2f}' for w in waits)} s; A's image job time "
          f"{spread(done)}; first come first served: ~{statistics.median(queued_then) / 20 * 10 * SCALE:.0f} s each")


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phases", default="drain,mixed,fairness")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=500)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--profile", default="", metavar="FILE")
    args = parser.parse_args()
    global SCALE, DSN, PROFILE
    SCALE, PROFILE = args.scale, args.profile
    phases = args.phases.split(",")
    api_key = f"xai-bench-{uuid.uuid4().hex}"
    async with own_database("lustify_bench_pipeline") as settings:
        settings = settings.model_copy(update={"data_dir": tempfile.mkdtemp(prefix="lustify-bench-")})
        DSN = _dsn(settings.sqlalchemy_url)
        users = await make_users(settings.sqlalchemy_url, 10, credits=50_000)
        with fake_xai(api_key, args.scale) as xai_url:
            extra = {"GROK_API_KEY": api_key, "GROK_BASE_URL": xai_url, "LOG_LEVEL": "WARNING",
                     "DB_POOL_SIZE": os.environ.get("DB_POOL_SIZE", "20")}
            env = settings_env(settings, **extra)
            async with server_process(settings, **extra) as base:
                client = Client(base, settings)
                conn = await asyncpg.connect(_dsn(settings.sqlalchemy_url))
                try:
                    if "drain" in phases:
                        await phase_drain(env, base, client, conn, users, args.images)
                    if "mixed" in phases:
                        await phase_mixed(env, base, client, conn, users, args.videos, 300)
                    if "fairness" in phases:
                        await phase_fairness(env, base, client, conn, users, 200)
                finally:
                    await conn.close()
                    await client.close()
        check = subprocess.run([sys.executable, "-m", "server.cli", "ledger", "check"],
                               env=settings_env(settings), capture_output=True, text=True)
        print(check.stdout.strip() or check.stderr.strip())
        return check.returncode


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
