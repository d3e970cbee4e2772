"""Signed-out sessions' sockets closed in every server process: the after-commit publish
(`revoke_sockets`) and each process's listener (`listen_for_revocations`)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from db.session import after_commit

log = logging.getLogger(__name__)


def _publisher(session: AsyncSession) -> Any:
    publisher = session.info.get("publisher")
    if publisher is None:  # sockets would stay open after the sign-out: refuse, loudly
        raise RuntimeError("revoking sockets needs a session from Resources.sessionmaker (it carries the publisher)")
    return publisher


def revoke_sockets(session: AsyncSession, user_id: uuid.UUID) -> None:
    """After commit, every server process drops this user's sockets."""
    publisher = _publisher(session)
    after_commit(session, lambda: publisher.disconnect_user(user_id))


def revoke_session_sockets(session: AsyncSession, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """After commit, every server process drops the sockets of this one signed-in session."""
    publisher = _publisher(session)
    after_commit(session, lambda: publisher.disconnect_session(user_id, session_id))

OnRevoked = Callable[[str], Awaitable[None]]
OnSessionRevoked = Callable[[str, str], Awaitable[None]]


# A message on the channel: `user_id` (all of the user's sessions) or `user_id session_id` (one).
async def listen_for_revocations(redis_url: str, channel: str, on_revoked: OnRevoked,
                                 *, on_session_revoked: OnSessionRevoked | None = None,
                                 subscribed: asyncio.Event | None = None) -> None:
    """Call `on_revoked(user_id)` or `on_session_revoked(user_id, session_id)` for each message
    on `channel`, reconnecting as needed."""
    backoff = 0.5
    while True:
        # Its own connection without a read timeout: a quiet channel is not a dead one.
        redis = Redis.from_url(redis_url, health_check_interval=30)
        try:
            async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel)
                if subscribed is not None:
                    subscribed.set()
                backoff = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    data = message["data"]
                    user_id, _, session_id = (
                        data.decode() if isinstance(data, bytes) else str(data)).partition(" ")
                    try:
                        if session_id and on_session_revoked is not None:
                            await on_session_revoked(user_id, session_id)
                        else:
                            await on_revoked(user_id)
                    except Exception:
                        log.exception("closing revoked sockets failed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("revocation listener lost Redis (%s); retrying in %.1fs", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30)
        finally:
            await redis.aclose()
