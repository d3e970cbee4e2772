"""arq WorkerSettings built from Settings; resources live in the worker's ctx."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker

from server.config import Settings
from server.resources import open_resources


async def startup(ctx: dict[str, Any]) -> None:
    stack = AsyncExitStack()
    ctx["stack"] = stack
    ctx["res"] = await stack.enter_async_context(open_resources(ctx["settings"]))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["stack"].aclose()


def job_functions() -> list[Any]:
    from jobs.email import EMAIL_JOB

    return [EMAIL_JOB]


def cron_jobs() -> list[Any]:
    from jobs.billing import BILLING_CRON

    return [BILLING_CRON]


def worker_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "functions": job_functions(),
        "cron_jobs": cron_jobs(),
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
