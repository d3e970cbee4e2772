"""Hot reads on a plain asyncpg pool: SQLAlchemy Core statements compiled once, run raw."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.sql import Executable

_DIALECT = asyncpg_dialect.dialect()


# The statements stay Core (typed against the models); only their execution skips the ORM
# session, the greenlet bridge and the per-checkout reset round trip.
class Query:
    """A Core statement compiled to asyncpg's $n form; `args` orders the bind values."""

    def __init__(self, statement: Executable) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql = str(compiled)
        self._names = compiled.positiontup or []
        self._defaults = compiled.params

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] if name in values else self._defaults[name] for name in self._names]

    async def fetch(self, conn: asyncpg.Connection, **values: Any) -> list[asyncpg.Record]:
        return await conn.fetch(self.sql, *self.args(values))

    async def fetchrow(self, conn: asyncpg.Connection, **values: Any) -> asyncpg.Record | None:
        return await conn.fetchrow(self.sql, *self.args(values))


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Readers only SELECT in autocommit: nothing to undo, so no round trip on release."""


async def open_reader(url: str, *, size: int) -> asyncpg.Pool:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    return await asyncpg.create_pool(
        dsn, min_size=1, max_size=size, reset=_no_reset, timeout=5, command_timeout=30,
        max_inactive_connection_lifetime=300, server_settings={"timezone": "UTC"},
    )


async def ping(pool: asyncpg.Pool) -> None:
    """One round trip to PostgreSQL on a pooled connection (raises if it is unreachable)."""
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
