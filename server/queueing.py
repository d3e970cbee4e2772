"""Enqueueing arq jobs: the caller's request id travels with the job into its logs."""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from arq.jobs import Job

from server.logs import request_id


async def enqueue(queue: ArqRedis, function: str, *args: Any, job_id: str | None = None,
                  **kwargs: Any) -> Job | None:
    """Queue `function`; None when a job with this id already exists (arq keeps one)."""
    return await queue.enqueue_job(function, *args, _job_id=job_id, request_id=request_id.get(), **kwargs)
