"""Signed-out sessions in Redis, kept as long as their access tokens could still be valid."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import bindparam, exists, select

from db.models import RefreshToken
from db.reader import Query
from server.auth.tokens import LEEWAY
from server.config import Settings
from server.errors import TokenRevoked

log = logging.getLogger(__name__)
_FAMILIES_REVOKED = """
SELECT DISTINCT family_id FROM refresh_tokens WHERE family_id = ANY($1::uuid[]) AND revoked_at IS NOT NULL
"""
_FAMILY_REVOKED = Query(select(exists().where(RefreshToken.family_id == bindparam("family_id"),
                                              RefreshToken.revoked_at.is_not(None))))


def _key(settings: Settings, session_id: uuid.UUID | str) -> str:
    return settings.key("revoked-session", session_id)


async def revoke(redis: Redis, settings: Settings, *, session_ids: Iterable[uuid.UUID]) -> None:
    """From now on, every access token of these sessions answers 401 token_revoked."""
    # A Redis error propagates (503): no logout that leaves tokens working once Redis is back.
    ttl = settings.access_token_ttl_seconds + LEEWAY  # no token of them outlives this
    async with redis.pipeline(transaction=False) as pipe:
        for session_id in set(session_ids):
            pipe.set(_key(settings, session_id), 1, ex=ttl)
        await pipe.execute()


async def ensure_live(redis: Redis, settings: Settings, reader: asyncpg.Connection, *,
                      session_id: uuid.UUID) -> None:
    """Raise TokenRevoked if this session was signed out (every authenticated request, connect)."""
    try:
        revoked = await redis.exists(_key(settings, session_id))
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        # Logout revoked the token family in PostgreSQL too: still refused, and the API stays up.
        log.warning("session check falls back to PostgreSQL: Redis unavailable (%s)", exc)
        revoked = (await _FAMILY_REVOKED.fetchrow(reader, family_id=session_id))[0]
    if revoked:
        raise TokenRevoked("This session has been signed out; sign in again")


async def revoked_among(redis: Redis, settings: Settings, reader: asyncpg.Pool,
                        session_ids: Iterable[uuid.UUID | None]) -> set[uuid.UUID]:
    """Which of these sessions were signed out: `ensure_live` for many in one round trip."""
    ids = list({i for i in session_ids if i is not None})
    if not ids:
        return set()
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.exists(_key(settings, session_id))
            found = await pipe.execute()
        return {i for i, hit in zip(ids, found, strict=True) if hit}
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        log.warning("session check falls back to PostgreSQL: Redis unavailable (%s)", exc)
        async with reader.acquire() as conn:
            rows = await conn.fetch(_FAMILIES_REVOKED, ids)
        return {row["family_id"] for row in rows}
