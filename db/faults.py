"""Which database and Redis errors mean "try again": a lost connection, a deadlock, a
serialization failure. One classification for HTTP (503), transactions (retry) and jobs."""

from __future__ import annotations

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
# Server going away (admin shutdown, crash, "cannot connect now" while it starts).
CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004"})

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, OSError, ConnectionError, TimeoutError, PoolTimeout,
    OperationalError, InterfaceError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # "cannot switch to state 15; protocol is in the failed state"
    asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
)


def _chain(exc: BaseException):
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__


def sqlstate(exc: BaseException) -> str | None:
    for item in _chain(exc):
        code = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_retryable_conflict(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the whole transaction may simply run again."""
    return sqlstate(exc) in RETRYABLE_SQLSTATES


def is_connection_lost(exc: BaseException) -> bool:
    """PostgreSQL or Redis is unreachable or restarting (never a bug of ours, never a 500)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if sqlstate(exc) in CONNECTION_SQLSTATES:
        return True
    return any(isinstance(item, _CONNECTION_ERRORS) for item in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    return is_connection_lost(exc) or is_retryable_conflict(exc)
