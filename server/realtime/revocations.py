"""Every server process listens for revoked sessions and closes that user's sockets here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

log = logging.getLogger(__name__)

OnRevoked = Callable[[str], Awaitable[None]]


async def listen_for_revocations(redis_url: str, channel: str, on_revoked: OnRevoked,
                                 *, subscribed: asyncio.Event | None = None) -> None:
    """Call `on_revoked(user_id)` for each message on `channel`, reconnecting as needed."""
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
                    user_id = data.decode() if isinstance(data, bytes) else str(data)
                    try:
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
