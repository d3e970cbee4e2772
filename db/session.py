"""Engine, session factory, and the one transaction helper with after-commit hooks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger(__name__)

AfterCommit = Callable[[], Awaitable[object]]


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    # No pre-ping: with asyncpg it costs three round trips per checkout. A dead connection
    # fails one request with a 503, and SQLAlchemy then invalidates the pool.
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        pool_recycle=1800,
        connect_args={"timeout": 5, "command_timeout": 30, "server_settings": {"timezone": "UTC"}},
    )


def make_sessionmaker(
    engine: AsyncEngine, *, info: dict | None = None
) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False, info=info or {})


def after_commit(session: AsyncSession, hook: AfterCommit) -> None:
    """Run `hook` once the surrounding transaction has committed (never if it rolls back)."""
    session.info.setdefault("after_commit", []).append(hook)


@asynccontextmanager
async def transaction(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on error, then run after-commit hooks.

    Hooks (publishing events, enqueueing jobs) must never undo a commit, so their
    failures are logged; the periodic sweep and replay cover what they missed.
    """
    async with sessionmaker() as session:
        await session.begin()
        try:
            yield session
        except BaseException as exc:
            # Some refusals must still persist what they did (e.g. revoking a token family).
            if not getattr(exc, "commit_before_raise", False):
                await session.rollback()
                raise
            await session.commit()
            await _run_hooks(session)
            raise
        await session.commit()
        await _run_hooks(session)


async def _run_hooks(session: AsyncSession) -> None:
    for hook in session.info.pop("after_commit", []):
        try:
            await hook()
        except Exception:
            log.exception("after-commit hook failed")
