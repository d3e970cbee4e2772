"""Enqueueing arq jobs (the caller's request id travels with the job into its logs), and the
workers' heartbeat that /health reads."""

from __future__ import annotations

import time
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job

from server.config import Settings
from server.logs import request_id

WORKER_STALE_SECONDS = 15.0  # no heartbeat this long: no worker is running


async def enqueue(queue: ArqRedis, function: str, *args: Any, job_id: str | None = None,
                  **kwargs: Any) -> Job | None:
    """Queue `function`; None when a job with this id already exists (arq keeps one)."""
    return await queue.enqueue_job(function, *args, _job_id=job_id, request_id=request_id.get(), **kwargs)


def worker_heartbeat_key(settings: Settings) -> str:
    """A sorted set: worker id -> time of its last heartbeat."""
    return settings.key("workers")


async def live_workers(redis: Any, settings: Settings) -> int:
    """How many workers beat within WORKER_STALE_SECONDS."""
    return await redis.zcount(worker_heartbeat_key(settings), time.time() - WORKER_STALE_SECONDS, "+inf")
