"""The arq worker built from Settings: heartbeat, Redis outages survived, jobs handed back on
shutdown, generation starts taken in lanes from the fair queue (docs/architecture.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import socket
import time
from contextlib import AsyncExitStack
from signal import Signals
from typing import Any

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import Worker
from redis.exceptions import RedisError

from server import logs
from server.config import Settings
from server.queueing import due_jobs, take_fairly, worker_heartbeat_key
from server.resources import open_resources

log = logging.getLogger("jobs")
HEARTBEAT_SECONDS = 2.0
DUE_LOOK = 20_000  # arq keeps running jobs in its queue: how far past them to look for due ones


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class QuietPolls(logging.Filter):
    """Drops arq's start and retry lines of a rendering video's polls (one each per poll,
    hundreds a second with hundreds of videos) unless the jobs logger is at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        poll = (len(args) > 1 and str(args[1]).endswith(":generate_video")
                and ("retrying" in str(record.msg) or "try=" in str(args[-1])))
        return not poll or log.isEnabledFor(logging.DEBUG)


class LustifyWorker(Worker):
    """arq's Worker that outlives Redis outages, beats a heartbeat /health can see, and takes
    jobs in lanes of their own capacity."""

    def __init__(self, *args: Any, heartbeat: str, lanes: dict[str, int], **kwargs: Any) -> None:
        super().__init__(*args, max_jobs=sum(lanes.values()), **kwargs)
        self.heartbeat = heartbeat
        self.id = worker_id()
        self._last_beat = 0.0
        self._redis_down_since: float | None = None
        self.lanes = lanes  # capacity of each lane: "image", "video" (fair), "other" (due by time)
        self.running: dict[str, dict[str, asyncio.Task]] = {lane: {} for lane in lanes}
        self._finishing: set[asyncio.Task] = set()
        self.ctx["in_progress_ms"] = int(self.in_progress_timeout_s * 1000)  # the sweep reads it
        arq_log = logging.getLogger("arq.worker")
        if not any(isinstance(f, QuietPolls) for f in arq_log.filters):
            arq_log.addFilter(QuietPolls())

    def handle_sig(self, signum: Signals) -> None:
        self.ctx["stopping"].set()  # jobs tell a shutdown from a timeout by this
        super().handle_sig(signum)

    def handle_sig_wait_for_completion(self, signum: Signals) -> None:
        self.ctx["stopping"].set()
        super().handle_sig_wait_for_completion(signum)

    async def _poll_iteration(self) -> None:
        # arq lets a Redis error out of its poll loop and the worker dies; here it waits
        # for Redis instead (running jobs go on: they use their own connections).
        try:
            await self._pick_jobs()
            await self._beat()
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if self._redis_down_since is None:
                self._redis_down_since = now
                log.warning("worker lost Redis (%s); waiting for it", exc)
            await asyncio.sleep(min(1.0, 0.1 + (now - self._redis_down_since) / 10))
            return
        if self._redis_down_since is not None:
            log.warning("worker has Redis again after %.1f s", time.monotonic() - self._redis_down_since)
            self._redis_down_since = None

    async def _pick_jobs(self) -> None:
        """arq's poll iteration, with jobs taken per lane instead of arq's first N due ones."""
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # errors of run_job itself surface, as in arq
        for lane, running in self.running.items():
            self.running[lane] = {job_id: task for job_id, task in running.items() if not task.done()}
        if self.allow_pick_jobs:
            # The lanes at once: under load every await costs a turn of a busy loop.
            await asyncio.gather(*(self._fill(lane) for lane in self.lanes))
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        await self.heart_beat()

    async def _fill(self, lane: str) -> None:
        free = max(0, min(self.lanes[lane] - len(self.running[lane]), self.max_jobs - self.job_counter))
        if not free:
            return
        running_ms = int(self.in_progress_timeout_s * 1000)
        if lane == "other":
            jobs = await due_jobs(self.pool, queue_name=self.queue_name, count=free, look=DUE_LOOK,
                                  running_ms=running_ms)
        else:
            jobs = await take_fairly(self.pool, queue_name=self.queue_name, kind=lane, count=free,
                                     running_ms=running_ms)
        for job_id, score in jobs:
            await self._launch(lane, job_id, score)

    async def _launch(self, lane: str, job_id: str, score: int) -> None:
        """arq's start_jobs for a job the scripts above already marked running (one round trip
        for them all instead of four per job)."""
        await self.sem.acquire()  # never waits: the lanes add up to max_jobs
        self.job_counter += 1
        task = self.loop.create_task(self.run_job(job_id, score))
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[job_id] = task
        self.running[lane][job_id] = task

    async def _beat(self) -> None:
        now = time.time()
        if now - self._last_beat < HEARTBEAT_SECONDS:
            return
        self._last_beat = now
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zadd(self.heartbeat, {self.id: now})
            pipe.zremrangebyscore(self.heartbeat, "-inf", now - 3600)
            await pipe.execute()

    async def finish_job(self, *args: Any, **kwargs: Any) -> None:
        task = asyncio.current_task()  # arq shields it: a task of its own
        assert task is not None
        self._finishing.add(task)
        try:
            await super().finish_job(*args, **kwargs)
        finally:
            self._finishing.discard(task)

    async def close(self) -> None:
        if self._pool is not None:
            # arq's close stops at the first job cancelled while it was being finished, and the
            # process exits with other jobs' bookkeeping undone: a handed-back job would then
            # look running for minutes. Every job's end is written first.
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            await asyncio.gather(*self._finishing, return_exceptions=True)
            self.tasks.clear()
            try:
                await self.pool.zrem(self.heartbeat, self.id)
            except (RedisError, OSError):
                pass
        await super().close()


async def startup(ctx: dict[str, Any]) -> None:
    stack = AsyncExitStack()
    ctx["stack"] = stack
    ctx["res"] = await stack.enter_async_context(open_resources(ctx["settings"]))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["stack"].aclose()


def traced(coroutine: Any) -> Any:
    """Run a job under the request id that enqueued it (server/queueing.py), else its job id."""

    @functools.wraps(coroutine)
    async def run(ctx: dict[str, Any], *args: Any, request_id: str | None = None, **kwargs: Any) -> Any:
        rid = request_id or f"job-{ctx.get('job_id')}"
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        outcome = "failed"
        level = logging.INFO
        try:
            result = await coroutine(ctx, *args, **kwargs)
            outcome = result if isinstance(result, str) else "done"
            # A periodic job that found nothing to do says so only at DEBUG: an idle
            # system's log stays empty.
            if _nothing_done(result):
                level = logging.DEBUG
            elif isinstance(result, dict):
                outcome = ", ".join(f"{k}={v}" for k, v in result.items() if v)
            return result
        except Retry as again:
            # A video's poll, or a retry the run has already logged: hundreds a second at load.
            level, outcome = logging.DEBUG, f"runs again in {(again.defer_score or 0) / 1000:.1f} s"
            raise
        finally:
            log.log(level, "job %s (%s) %s in %.0f ms", coroutine.__name__, ctx.get("job_id"), outcome,
                    (time.perf_counter() - started) * 1000, extra={"request_id": rid})
            logs.request_id.reset(token)

    return run


def _nothing_done(result: Any) -> bool:
    if isinstance(result, dict):
        return not any(result.values())
    return result == 0


def job_functions(settings: Settings) -> list[Any]:
    from jobs.avatars import AVATAR_JOB
    from jobs.email import EMAIL_JOB, PASSWORD_RESET_JOB
    from jobs.generation import generation_jobs

    functions = [EMAIL_JOB, PASSWORD_RESET_JOB, AVATAR_JOB, *generation_jobs(settings)]
    return [dataclasses.replace(f, coroutine=traced(f.coroutine)) for f in functions]


def cron_jobs(settings: Settings) -> list[Any]:
    from arq.cron import cron

    from jobs.avatars import sweep_avatars
    from jobs.billing import BILLING_CRON
    from jobs.idempotency import IDEMPOTENCY_CRON
    from jobs.sweep import sweep_cron

    jobs = [
        sweep_cron(settings),
        cron(sweep_avatars, minute=set(range(0, 60, 5)), run_at_startup=False, unique=True),
        BILLING_CRON,
        IDEMPOTENCY_CRON,
    ]
    return [dataclasses.replace(job, coroutine=traced(job.coroutine)) for job in jobs]


def worker_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "functions": job_functions(settings),
        "cron_jobs": cron_jobs(settings),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_dsn),
        "queue_name": settings.key("queue"),
        "poll_delay": settings.worker_poll_delay_seconds,
        "lanes": {"image": settings.worker_image_jobs, "video": settings.worker_video_jobs,
                  "other": settings.worker_other_jobs},
        "job_timeout": 600,
        "keep_result": 300,
        # arq gives each job a copy of ctx: "stopping" is an object they share, not a flag.
        "ctx": {"settings": settings, "stopping": asyncio.Event()},
        "handle_signals": True,
        # SIGTERM: take no new job, let running ones finish for this long, then hand them back.
        "job_completion_wait": settings.worker_shutdown_grace_seconds,
        "heartbeat": worker_heartbeat_key(settings),
    }
    options.update(overrides)
    return options


def make_worker(settings: Settings, **overrides: Any) -> LustifyWorker:
    return LustifyWorker(**worker_options(settings, **overrides))
