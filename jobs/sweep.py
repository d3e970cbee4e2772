"""The cron sweep: no charged generation is ever lost.

Queued content whose job is missing (Redis lost it, or the enqueue after commit failed)
is enqueued again; processing content whose lease expired (its worker died) is taken
over by a fresh job, or failed and refunded once its attempts are used up.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from arq.cron import cron
from arq.jobs import Job, JobStatus
from sqlalchemy import func as sql
from sqlalchemy import select, update

from db.models import GeneratedContent as C
from db.session import transaction
from jobs.generation import fail_generation
from server.content.service import JOB_FOR_KIND
from server.queueing import enqueue
from server.resources import Resources

log = logging.getLogger(__name__)
BATCH = 200


async def _job_alive(res: Resources, job_id: str | None) -> bool:
    if not job_id:
        return False
    status = await Job(job_id, res.queue, _queue_name=res.settings.key("queue")).status()
    return status in (JobStatus.queued, JobStatus.deferred, JobStatus.in_progress)


async def _requeue(res: Resources, *, content_id, kind: str, reason: str) -> None:
    job_id = f"{content_id}:{reason}{int(time.time() * 1000)}"
    async with transaction(res.sessionmaker) as session:
        await session.execute(update(C).where(C.id == content_id).values(job_id=job_id))
    await enqueue(res.queue, JOB_FOR_KIND[kind], str(content_id), job_id=job_id)
    log.warning("sweep re-enqueued %s content %s as %s", kind, content_id, job_id)


async def sweep_generations(ctx: dict[str, Any]) -> dict[str, int]:
    res: Resources = ctx["res"]
    settings = res.settings
    counts = {"requeued": 0, "taken_over": 0, "failed": 0}
    async with res.sessionmaker() as session:
        stale_queued = (
            await session.execute(
                select(C.id, C.type, C.job_id).where(
                    C.status == "queued",
                    C.updated_at < sql.now() - sql.make_interval(0, 0, 0, 0, 0, 0, settings.queued_grace_seconds),
                ).limit(BATCH)
            )
        ).all()
        expired = (
            await session.execute(
                select(C.id, C.type, C.attempts).where(C.status == "processing", C.deadline_at < sql.now())
                .limit(BATCH)
            )
        ).all()
    for row in stale_queued:
        if not await _job_alive(res, row.job_id):
            await _requeue(res, content_id=row.id, kind=row.type, reason="sweep")
            counts["requeued"] += 1
    for row in expired:
        if row.attempts >= settings.generation_max_attempts:
            if await fail_generation(res, content_id=row.id, attempt=row.attempts,
                                     error="The generation did not finish after several attempts"):
                counts["failed"] += 1
        else:
            await _requeue(res, content_id=row.id, kind=row.type, reason="takeover")
            counts["taken_over"] += 1
    return counts


def sweep_cron(settings) -> Any:
    seconds = set(range(0, 60, settings.sweep_interval_seconds))
    return cron(sweep_generations, name="sweep_generations", second=seconds, microsecond=0,
                run_at_startup=True, timeout=120)
