"""Billing operations: a row written before the payment provider is called, finished after,
so no provider call runs inside a database transaction."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import BillingOperation
from db.session import transaction
from server.adapters.billing.base import BillingError
from server.errors import Conflict, DomainError, ServiceUnavailable

if TYPE_CHECKING:
    from server.resources import Resources

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# Stripe forgets idempotency keys after 24 h: an older operation is never run again.
KEY_LIFETIME = timedelta(hours=23)
_COLUMNS = (BillingOperation.id, BillingOperation.user_id, BillingOperation.kind,
            BillingOperation.params, BillingOperation.request_key, BillingOperation.attempts,
            BillingOperation.created_at)


@dataclass(frozen=True)
class Operation:
    id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    request_key: str | None
    attempts: int

    def key(self, step: str) -> str:
        """The provider idempotency key of one step: the same on every run of this request."""
        scope = f"req:{self.request_key}" if self.request_key else f"op:{self.id}"
        return f"lustify:{self.user_id}:{scope}:{self.kind}:{step}"


Runner = Callable[["Resources", Operation], Awaitable[dict[str, Any]]]


class Superseded(Exception):
    """Another run took this operation over; this run must not record anything."""


def _operation(row: Mapping[str, Any]) -> Operation:
    return Operation(row["id"], row["user_id"], row["kind"], dict(row["params"]),
                     row["request_key"], row["attempts"])


def request_key(idempotency_key: str | None) -> str | None:
    """What is kept of a client's Idempotency-Key (the key itself never is)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest() if idempotency_key else None


# A change is (1) a short transaction recording the operation (one pending per user), (2) the
# provider calls, keyed by Operation.key, (3) a short transaction recording the outcome
# (`complete`). A process that dies in between leaves it pending; once stale it runs again
# with the same keys, so the provider hands back what it already made instead of a second one.
async def run(res: Resources, *, user_id: uuid.UUID, kind: str, params: dict[str, Any],
              idempotency_key: str | None, runners: Mapping[str, Runner]) -> dict[str, Any]:
    """Record the operation (waiting for the user's previous one), run it, return its answer."""
    op = await _begin(res, user_id=user_id, kind=kind, params=params,
                      request_key=request_key(idempotency_key), runners=runners)
    return await execute(res, op, runners)


async def execute(res: Resources, op: Operation, runners: Mapping[str, Runner]) -> dict[str, Any]:
    """Run one operation; domain refusals and provider failures finish it, crashes leave it pending."""
    try:
        return await runners[op.kind](res, op)
    except Superseded:
        raise Conflict("This billing change took too long and was finished elsewhere; "
                       "reload your subscription") from None
    except DomainError as exc:
        await _finish(res, op, status="failed", error=exc.message)
        raise
    except BillingError as exc:
        if exc.transient and op.attempts < MAX_ATTEMPTS:
            # The provider may have done it: run again soon with the same keys, not forgotten.
            await _release(res, op, error=exc.message)
        else:
            await _finish(res, op, status="failed", error=exc.message)
        log.warning("billing %s %s failed: %s", op.kind, op.id, exc.message)  # details for operators
        raise ServiceUnavailable("The payment provider could not complete this; try again shortly") from exc
    except Exception as exc:
        with contextlib.suppress(Exception):  # e.g. the database is down: the sweep takes it later
            await _release(res, op, error=f"interrupted: {type(exc).__name__}")
        raise


async def complete(session: AsyncSession, op: Operation, *, result: dict[str, Any]) -> None:
    """Finish the operation in the transaction that records its outcome."""
    done = await session.execute(update(BillingOperation).where(
        BillingOperation.id == op.id, BillingOperation.status == "pending",
        BillingOperation.attempts == op.attempts,
    ).values(status="done", result=result, error=None, finished_at=func.now(), updated_at=func.now()))
    if done.rowcount != 1:
        raise Superseded()


async def _finish(res: Resources, op: Operation, *, status: str, error: str) -> None:
    async with transaction(res.sessionmaker) as session:
        await session.execute(update(BillingOperation).where(
            BillingOperation.id == op.id, BillingOperation.status == "pending",
            BillingOperation.attempts == op.attempts,
        ).values(status=status, error=error[:2000], finished_at=func.now(), updated_at=func.now()))


async def _release(res: Resources, op: Operation, *, error: str) -> None:
    """Leave the operation pending but due at once for another run."""
    stale = timedelta(seconds=res.settings.billing_operation_stale_seconds + 1)
    async with transaction(res.sessionmaker) as session:
        await session.execute(update(BillingOperation).where(
            BillingOperation.id == op.id, BillingOperation.status == "pending",
            BillingOperation.attempts == op.attempts,
        ).values(error=error[:2000], updated_at=func.now() - stale))


async def _begin(res: Resources, *, user_id: uuid.UUID, kind: str, params: dict[str, Any],
                 request_key: str | None, runners: Mapping[str, Runner]) -> Operation:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + res.settings.billing_lock_wait_seconds
    pause = 0.02
    while True:
        async with transaction(res.sessionmaker) as session:
            row = (await session.execute(
                insert(BillingOperation).values(user_id=user_id, kind=kind, params=params,
                                                request_key=request_key)
                .on_conflict_do_nothing(index_elements=[BillingOperation.user_id],
                                        index_where=text("status = 'pending'"))
                .returning(*_COLUMNS))).mappings().one_or_none()
            if row is not None:
                return _operation(row)
            stale = await _claim_stale(session, res, user_id=user_id)
        if stale is not None:  # its process died: finish it first, with its own keys
            await _rerun(res, stale, runners)
            continue
        if loop.time() >= deadline:
            raise Conflict("Another billing change of yours is still in progress; try again shortly")
        await asyncio.sleep(pause)  # the other change finishes in a provider round trip or two
        pause = min(pause * 2, 0.25)


async def _claim_stale(session: AsyncSession, res: Resources, *,
                       user_id: uuid.UUID | None = None) -> Mapping[str, Any] | None:
    """Take over one stale pending operation (compare-and-set on its last touch)."""
    stale_before = func.now() - timedelta(seconds=res.settings.billing_operation_stale_seconds)
    pick = (select(BillingOperation.id).where(BillingOperation.status == "pending",
                                              BillingOperation.updated_at < stale_before)
            .order_by(BillingOperation.updated_at).limit(1).with_for_update(skip_locked=True))
    if user_id is not None:
        pick = pick.where(BillingOperation.user_id == user_id)
    return (await session.execute(
        update(BillingOperation).where(BillingOperation.id == pick.scalar_subquery(),
                                       BillingOperation.updated_at < stale_before)
        .values(attempts=BillingOperation.attempts + 1, updated_at=func.now())
        .returning(*_COLUMNS, (BillingOperation.created_at < func.now() - KEY_LIFETIME).label("expired"))
    )).mappings().one_or_none()


async def _rerun(res: Resources, row: Mapping[str, Any], runners: Mapping[str, Runner]) -> None:
    op = _operation(row)
    too_old = row["expired"]
    if too_old or op.attempts > MAX_ATTEMPTS:
        reason = "its provider keys have expired" if too_old else f"{MAX_ATTEMPTS} runs failed"
        log.error("billing %s %s of user %s given up: %s", op.kind, op.id, op.user_id, reason)
        await _finish(res, op, status="failed", error=f"given up: {reason}")
        return
    log.warning("billing %s %s of user %s was left unfinished; running it again (run %d)",
                op.kind, op.id, op.user_id, op.attempts)
    try:
        await execute(res, op, runners)
    except Exception as exc:  # its own request is long gone; the outcome is logged
        log.warning("re-run of billing %s %s ended with %s", op.kind, op.id, type(exc).__name__)


async def finish_stale(res: Resources, runners: Mapping[str, Runner], *, limit: int = 50) -> int:
    """Run again every operation whose process died (the worker's sweep); how many were taken."""
    taken = 0
    while taken < limit:
        async with transaction(res.sessionmaker) as session:
            row = await _claim_stale(session, res)
        if row is None:
            return taken
        taken += 1
        await _rerun(res, row, runners)
    return taken
