"""Engine, session factory, and the one transaction helper: hooks before and after commit,
whole-transaction retries on deadlocks and serialization failures."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from db.faults import is_connection_lost, is_retryable_conflict

log = logging.getLogger(__name__)

AfterCommit = Callable[[], Awaitable[object]]
BeforeCommit = Callable[[AsyncSession], Awaitable[object]]
T = TypeVar("T")
CONFLICT_ATTEMPTS = 5


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    # No pre-ping (three round trips per checkout with asyncpg): a connection the server
    # closed is refused at checkout without a round trip, and any connection error marks
    # the whole pool stale so one failure, not one per pooled connection, pays for a restart.
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        pool_recycle=1800,
        connect_args={"timeout": 5, "command_timeout": 30, "server_settings": {"timezone": "UTC"}},
    )
    event.listen(engine.sync_engine, "checkout", _refuse_closed)
    event.listen(engine.sync_engine, "handle_error", _mark_disconnects)
    return engine


def _refuse_closed(dbapi_connection, connection_record, connection_proxy) -> None:
    raw = getattr(dbapi_connection, "_connection", None)
    if raw is not None and raw.is_closed():
        raise exc.DisconnectionError("connection closed by the server")


def _mark_disconnects(context) -> None:
    if not context.is_disconnect and is_connection_lost(context.original_exception):
        context.is_disconnect = True


def make_sessionmaker(
    engine: AsyncEngine, *, info: dict | None = None
) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info or {})


def after_commit(session: AsyncSession, hook: AfterCommit) -> None:
    """Run `hook` once the surrounding transaction has committed (never if it rolls back)."""
    session.info.setdefault("after_commit", []).append(hook)


def before_commit(session: AsyncSession, name: str, hook: BeforeCommit) -> None:
    """Run `hook(session)` once, as the last statement(s) of the transaction."""
    session.info.setdefault("before_commit", {}).setdefault(name, hook)


@asynccontextmanager
async def transaction(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on error, then run after-commit hooks.

    Hooks (publishing events, enqueueing jobs) must never undo a commit, so their
    failures are logged; the relay's catch-up and the sweep cover what they missed.
    """
    async with sessionmaker() as session:
        await session.begin()
        try:
            yield session
        except BaseException as exc:
            # Some refusals must still persist what they did (e.g. revoking a token family).
            if not getattr(exc, "commit_before_raise", False):
                session.info.pop("after_commit", None)
                await session.rollback()
                raise
            await _commit(session)
            await _run_hooks(session)
            raise
        await _commit(session)
        await _run_hooks(session)


async def _commit(session: AsyncSession) -> None:
    for hook in session.info.pop("before_commit", {}).values():
        await hook(session)
    await session.commit()


async def run_in_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], work: Callable[[AsyncSession], Awaitable[T]],
    *, attempts: int = CONFLICT_ATTEMPTS,
) -> T:
    """`work` in one transaction, run again from scratch after a deadlock or serialization failure."""
    for attempt in range(1, attempts + 1):
        try:
            async with transaction(sessionmaker) as session:
                return await work(session)
        except Exception as exc:
            if attempt == attempts or not is_retryable_conflict(exc):
                raise
            delay = random.uniform(0.005, 0.02 * 2 ** attempt)  # jittered, so the two sides part
            log.info("transaction conflict (%s), retry %d in %.0f ms", type(exc).__name__, attempt,
                     delay * 1000)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _run_hooks(session: AsyncSession) -> None:
    for hook in session.info.pop("after_commit", []):
        try:
            await hook()
        except Exception as exc:
            if is_connection_lost(exc):  # Redis away: the catch-up and the sweep make up for it
                log.warning("after-commit hook skipped: %r", exc)
            else:
                log.exception("after-commit hook failed")
