"""The cron sweep: queued content with no job gets one, expired leases are taken over
(compare-and-set on what it read) or failed and refunded once attempts are used up."""

from __future__ import annotations

import logging
import time
from typing import Any

from arq.cron import cron
from sqlalchemy import func as sql
from sqlalchemy import select

from db.models import GeneratedContent as C
from server.content import lifecycle
from server.content.runner import fail_generation
from server.content.service import JOB_FOR_KIND
from server.queueing import enqueue_generation, generation_job_alive
from server.resources import Resources

log = logging.getLogger(__name__)
BATCH = 200


async def _take_over(res: Resources, row: Any, *, reason: str) -> bool:
    job_id = f"{row.id}:{reason}{int(time.time() * 1000)}"
    moved = await lifecycle.persist(res.sessionmaker, lambda session: lifecycle.take_over(
        session, content_id=row.id, seen_job_id=row.job_id, seen_status=row.status,
        seen_attempts=row.attempts, new_job_id=job_id), patience=0)
    if moved:
        await enqueue_generation(res.queue, function=JOB_FOR_KIND[row.type], kind=row.type, content_id=row.id,
                                 job_id=job_id, user_id=row.user_id)
        log.warning("sweep gave %s content %s a new job %s (%s)", row.type, row.id, job_id, reason)
    return moved


async def sweep_generations(ctx: dict[str, Any]) -> dict[str, int]:
    res: Resources = ctx["res"]
    settings = res.settings
    counts = {"requeued": 0, "taken_over": 0, "failed": 0}
    columns = (C.id, C.user_id, C.type, C.status, C.job_id, C.attempts)
    async with res.sessionmaker() as session:
        stale_queued = (await session.execute(
            select(*columns).where(
                C.status == "queued",
                C.updated_at < sql.now() - sql.make_interval(0, 0, 0, 0, 0, 0, settings.queued_grace_seconds),
            ).order_by(C.updated_at).limit(BATCH)
        )).all()
        expired = (await session.execute(
            select(*columns).where(C.status == "processing", C.deadline_at < sql.now())
            .order_by(C.deadline_at).limit(BATCH)
        )).all()
    # A live run claims its row at once, or within the database patience (twice: resume, claim).
    claims_within = int((2 * settings.generation_db_patience_seconds + 10) * 1000)
    running_for = (ctx["in_progress_ms"], claims_within) if "in_progress_ms" in ctx else None
    for row in stale_queued:
        if (not await generation_job_alive(res.queue, kind=row.type, job_id=row.job_id, running_for_ms=running_for)
                and await _take_over(res, row, reason="sweep")):
            counts["requeued"] += 1
    for row in expired:
        if row.attempts >= settings.generation_max_attempts:
            if await fail_generation(res, content_id=row.id, attempt=row.attempts, job_id=row.job_id,
                                     error="The generation did not finish after several attempts"):
                counts["failed"] += 1
        elif await _take_over(res, row, reason="takeover"):
            counts["taken_over"] += 1
    return counts


def sweep_cron(settings) -> Any:
    seconds = set(range(0, 60, settings.sweep_interval_seconds))
    return cron(sweep_generations, name="sweep_generations", second=seconds, microsecond=0,
                run_at_startup=True, timeout=120)
