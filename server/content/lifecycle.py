"""A generation's moves after its request (claim, progress, complete, fail, hand back, take over):
one transaction each, a compare-and-set on the row's job and attempt, safe to repeat."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import bindparam, select, update
from sqlalchemy import func as sql
from sqlalchemy.ext.asyncio import AsyncSession

from db.faults import is_transient
from db.models import GeneratedContent as C
from db.models import UserCredits
from db.reader import Query
from db.session import run_in_transaction
from server import activity
from server.content.queries import COLUMNS, UNFINISHED, render
from server.content.service import refund_generation
from server.credits.account import lock_account
from server.realtime import outbox
from server.realtime.events import GenerationCompleted, GenerationFailed, GenerationProgress

log = logging.getLogger(__name__)
T = TypeVar("T")
CONTENT = C.__table__  # Core statements: a worker makes hundreds of moves a second, the ORM path costs ~1.5x the CPU
K = CONTENT.c  # its columns
CONTENT_COLUMNS = tuple(K[column.key] for column in COLUMNS)
_ACCOUNT = UserCredits.__table__.c
LATEST_EVENT = (select(_ACCOUNT.event_seq).where(_ACCOUNT.user_id == K.user_id)
                .scalar_subquery().label("latest_event"))


class Superseded(Exception):
    """The row is no longer this run's (canceled, taken over, or finished by another run)."""


@dataclass
class Attempt:
    """The run that holds a row: its job id and attempt number, and what it read at claim."""
    content_id: uuid.UUID
    job_id: str
    number: int
    row: dict[str, Any]
    claimed: bool = True  # False: a video's poll went on with the attempt an earlier run claimed

    @property
    def user_id(self) -> uuid.UUID:
        return self.row["user_id"]

    def mine(self) -> tuple[Any, ...]:
        return (K.id == self.content_id, K.status == "processing", K.attempts == self.number,
                K.job_id == self.job_id)


async def persist(sessionmaker: Any, work: Callable[[AsyncSession], Awaitable[T]], *,
                  patience: float) -> T:
    """Run a move, again while PostgreSQL is unreachable (up to `patience` seconds)."""
    deadline = time.monotonic() + patience
    delay = 0.1
    while True:
        try:
            return await run_in_transaction(sessionmaker, work)
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def _progress(session: AsyncSession, row: Any, *, status: str, stage: str) -> None:
    outbox.emit_ephemeral(session, row["user_id"], GenerationProgress(
        content_id=row["id"], status=status, progress=row["progress"], stage=stage),
        latest=row["latest_event"] or 0)


async def claim(session: AsyncSession, *, content_id: uuid.UUID, job_id: str, lease_seconds: int,
                max_attempts: int) -> Attempt | None:
    """queued -> processing under a lease, for the job the row names; None if not ours to run.

    A processing row of this same job is taken too: arq runs one job id at a time, so
    such a row was left by this job's own earlier try (killed, or its reply lost).
    """
    row = (await session.execute(
        update(CONTENT)
        .where(K.id == content_id, K.job_id == job_id, K.status.in_(UNFINISHED),
               K.attempts < max_attempts)
        .values(status="processing", attempts=K.attempts + 1, stage="starting",
                progress=sql.greatest(K.progress, 5), deadline_at=sql.now() + timedelta(seconds=lease_seconds),
                started_at=sql.coalesce(K.started_at, sql.now()), error=None)
        .returning(*CONTENT_COLUMNS, K.charge_key, K.provider_request_id, LATEST_EVENT)
    )).mappings().one_or_none()
    if row is None:
        return None
    _progress(session, row, status="processing", stage="starting")
    return Attempt(content_id, job_id, row["attempts"], dict(row))


_RESUMABLE = Query(  # what a poll needs of the row, nothing more
    select(K.id, K.user_id, K.type, K.status, K.attempts, K.started_at, K.provider_request_id)
    .where(K.id == bindparam("content_id"), K.job_id == bindparam("job_id"), K.status == "processing",
           K.provider_request_id.is_not(None)))


async def resume(reader: asyncpg.Pool, *, content_id: uuid.UUID, job_id: str) -> Attempt | None:
    """A video's next poll: its processing row, for the job the row names, already holding a
    provider request; no new attempt. None if there is no such row.

    A plain read (a video is polled every few seconds): the poll pays nothing, and the step
    after it is the compare-and-set that renews the lease or finds the row taken over. Safe
    to run twice.
    """
    async with reader.acquire() as conn:
        row = await _RESUMABLE.fetchrow(conn, content_id=content_id, job_id=job_id)
    if row is None:
        return None
    return Attempt(content_id, job_id, row["attempts"], dict(row), claimed=False)


async def exhausted(session: AsyncSession, *, content_id: uuid.UUID, job_id: str, max_attempts: int) -> bool:
    """True if the row is this job's to run but has no attempt left (fail it, do not skip it)."""
    found = (await session.execute(
        select(K.id).where(K.id == content_id, K.job_id == job_id, K.status.in_(UNFINISHED),
                           K.attempts >= max_attempts)
    )).first()
    return found is not None


async def renew(session: AsyncSession, *, attempt: Attempt, lease_seconds: int) -> bool:
    """Extend the lease; False if the row is no longer this run's."""
    renewed = (await session.execute(
        update(CONTENT).where(*attempt.mine())
        .values(deadline_at=sql.now() + timedelta(seconds=lease_seconds)).returning(K.id)
    )).scalar_one_or_none()
    return renewed is not None


async def step(session: AsyncSession, *, attempt: Attempt, stage: str, progress: int, lease_seconds: int,
               **values: Any) -> None:
    """Persist progress (renewing the lease) and tell the user; Superseded if not ours."""
    row = (await session.execute(
        update(CONTENT).where(*attempt.mine())
        .values(stage=stage, progress=progress, deadline_at=sql.now() + timedelta(seconds=lease_seconds),
                **values)
        .returning(K.id, K.user_id, K.progress, LATEST_EVENT)
    )).mappings().one_or_none()
    if row is None:
        raise Superseded()
    _progress(session, row, status="processing", stage=stage)


async def complete(session: AsyncSession, *, attempt: Attempt, storage_key: str,
                   thumbnail_key: str | None, storage: Any) -> bool:
    """processing -> completed with its files; False if the row is no longer this run's."""
    await lock_account(session, user_id=attempt.user_id)
    row = (await session.execute(
        update(CONTENT).where(*attempt.mine())
        .values(status="completed", stage="completed", progress=100, error=None, storage_key=storage_key,
                thumbnail_key=thumbnail_key, completed_at=sql.now(), deadline_at=None)
        .returning(*CONTENT_COLUMNS)
    )).mappings().one_or_none()
    if row is None:
        # A repeat of a move that committed but whose reply was lost finds its own files there.
        done = (await session.execute(select(K.storage_key).where(
            K.id == attempt.content_id, K.status == "completed"))).scalar_one_or_none()
        return done == storage_key
    content = await render(row, storage)
    await activity.record(session, user_id=row["user_id"], type="content.completed",
                          message=f"{row['type'].capitalize()} ready",
                          data={"content_id": str(attempt.content_id), "type": row["type"]})
    outbox.emit(session, row["user_id"], GenerationCompleted(content=content))
    return True


async def fail(session: AsyncSession, *, content_id: uuid.UUID, error: str, attempt: int | None = None,
               job_id: str | None = None, code: str = "generation_failed") -> bool:
    """queued/processing -> failed, the charge refunded once, the user told."""
    owner = (await session.execute(select(K.user_id).where(K.id == content_id))).scalar_one_or_none()
    if owner is None:
        return False
    await lock_account(session, user_id=owner)
    where = [K.id == content_id, K.status.in_(UNFINISHED)]
    if attempt is not None:
        where.append(K.attempts == attempt)
    if job_id is not None:
        where.append(K.job_id == job_id)
    row = (await session.execute(
        update(CONTENT).where(*where)
        .values(status="failed", stage="failed", error=error[:1000], error_code=code, completed_at=sql.now(),
                deadline_at=None)
        .returning(K.user_id, K.type, K.charge_key)
    )).one_or_none()
    if row is None:
        return False
    kind = row.type.capitalize()
    refunded = await refund_generation(session, user_id=row.user_id, charge=row.charge_key,
                                       reason=f"{kind} generation failed")
    await activity.record(session, user_id=row.user_id, type="content.failed",
                          message=f"{kind} generation failed: {error[:200]}",
                          data={"content_id": str(content_id), "refunded": refunded})
    outbox.emit(session, row.user_id, GenerationFailed(content_id=content_id, error=error[:1000],
                                                       refunded=refunded, code=code))
    return True


async def hand_back(session: AsyncSession, *, attempt: Attempt, stage: str, counts: bool) -> bool:
    """processing -> queued for the same job id (a retry, or another worker after a shutdown).

    An attempt that did not fail on its own (a shutdown, a lost database) does not count:
    the claim's increment is undone (a video's poll claimed nothing, so nothing to undo).
    """
    row = (await session.execute(
        update(CONTENT).where(*attempt.mine())
        .values(status="queued", stage=stage, deadline_at=None,
                attempts=K.attempts if counts or not attempt.claimed else K.attempts - 1)
        .returning(K.id, K.user_id, K.progress, LATEST_EVENT)
    )).mappings().one_or_none()
    if row is None:
        return False
    _progress(session, row, status="queued", stage=stage)
    return True


async def take_over(session: AsyncSession, *, content_id: uuid.UUID, seen_job_id: str | None,
                    seen_status: str, seen_attempts: int, new_job_id: str) -> bool:
    """The sweep's move: name a new job for a row, only if the row is still as the sweep read it."""
    where = [K.id == content_id, K.status == seen_status, K.attempts == seen_attempts,
             K.job_id.is_(None) if seen_job_id is None else K.job_id == seen_job_id]
    if seen_status == "processing":
        where.append(K.deadline_at < sql.now())
    row = (await session.execute(
        update(CONTENT).where(*where)
        .values(job_id=new_job_id, status="queued", stage="queued" if seen_status == "queued" else "taken_over",
                deadline_at=None)
        .returning(K.id)
    )).scalar_one_or_none()
    return row is not None
