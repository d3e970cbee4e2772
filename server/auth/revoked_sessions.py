"""Signed-out sessions in Redis, kept as long as their access tokens could still be valid.

Checked on every authenticated request and socket connect, without a database read. When
Redis is down the check fails closed: requests answer 503 rather than let a token that may
have been signed out through (the rate limits and the job queue need Redis as well).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from redis.asyncio import Redis

from server.auth.tokens import LEEWAY
from server.config import Settings
from server.errors import TokenRevoked


def _key(settings: Settings, session_id: uuid.UUID | str) -> str:
    return settings.key("revoked-session", session_id)


async def revoke(redis: Redis, settings: Settings, *, session_ids: Iterable[uuid.UUID]) -> None:
    """From now on, every access token of these sessions answers 401 token_revoked."""
    ttl = settings.access_token_ttl_seconds + LEEWAY  # no token of them outlives this
    async with redis.pipeline(transaction=False) as pipe:
        for session_id in set(session_ids):
            pipe.set(_key(settings, session_id), 1, ex=ttl)
        await pipe.execute()


async def ensure_live(redis: Redis, settings: Settings, *, session_id: uuid.UUID) -> None:
    """Raise TokenRevoked if this session was signed out."""
    if await redis.exists(_key(settings, session_id)):
        raise TokenRevoked("This session has been signed out; sign in again")
