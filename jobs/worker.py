"""arq WorkerSettings built from Settings; resources live in the worker's ctx."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from contextlib import AsyncExitStack
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker

from server import logs
from server.config import Settings
from server.resources import open_resources

log = logging.getLogger("jobs")


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
        try:
            result = await coroutine(ctx, *args, **kwargs)
            outcome = result if isinstance(result, str) else "done"
            return result
        finally:
            log.info("job %s (%s) %s in %.0f ms", coroutine.__name__, ctx.get("job_id"), outcome,
                     (time.perf_counter() - started) * 1000, extra={"request_id": rid})
            logs.request_id.reset(token)

    return run


def job_functions(settings: Settings) -> list[Any]:
    from jobs.avatars import AVATAR_JOB
    from jobs.email import EMAIL_JOB
    from jobs.generation import generation_jobs

    functions = [EMAIL_JOB, AVATAR_JOB, *generation_jobs(settings)]
    return [dataclasses.replace(f, coroutine=traced(f.coroutine)) for f in functions]


def cron_jobs(settings: Settings) -> list[Any]:
    from arq.cron import cron

    from jobs.avatars import sweep_avatars
    from jobs.billing import BILLING_CRON
    from jobs.idempotency import IDEMPOTENCY_CRON
    from jobs.sweep import sweep_cron

    return [
        sweep_cron(settings),
        cron(sweep_avatars, minute=set(range(0, 60, 5)), run_at_startup=False, unique=True),
        BILLING_CRON,
        IDEMPOTENCY_CRON,
    ]


def worker_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "functions": job_functions(settings),
        "cron_jobs": cron_jobs(settings),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_dsn),
        "queue_name": settings.key("queue"),
        "poll_delay": settings.worker_poll_delay_seconds,
        "max_jobs": 20,
        "job_timeout": 600,
        "keep_result": 300,
        "ctx": {"settings": settings},
        "handle_signals": True,
    }
    options.update(overrides)
    return options


def make_worker(settings: Settings, **overrides: Any) -> Worker:
    return Worker(**worker_options(settings, **overrides))
