"""The one way any process tells a user's sockets something: a room emit through Redis, durable
events with their `seq` so servers can see a hole."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from redis.asyncio import Redis

from server.config import Settings
from server.realtime.events import Event
from server.realtime.outbox import Sequenced, now_ts


def user_room(user_id: uuid.UUID | str) -> str:
    return f"user:{user_id}"


class Publisher:
    def __init__(self, redis: Redis, settings: Settings, metrics: Any = None) -> None:
        self.redis = redis
        self.settings = settings
        self.metrics = metrics
        self.channel = settings.key("socketio")  # the servers' AsyncRedisManager channel
        self.host_id = uuid.uuid4().hex  # emits from here are never "our own" to a server

    def _message(self, user_id: uuid.UUID | str, name: str, payload: dict[str, Any],
                 seq: int | None) -> bytes:
        return orjson.dumps({
            "method": "emit", "event": name, "data": [payload], "namespace": "/",
            "room": user_room(user_id), "skip_sid": None, "callback": None, "host_id": self.host_id,
            "seq": seq,
        })

    async def publish_durable(self, user_id: uuid.UUID | str, events: list[Sequenced]) -> None:
        """Send committed, numbered events to the user's room, in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for seq, name, payload in events:
                pipe.publish(self.channel, self._message(user_id, name, payload, seq))
            await pipe.execute()
        if self.metrics is not None:
            for _, name, _ in events:
                self.metrics.events_published.labels(name).inc()

    async def publish_progress(self, user_id: uuid.UUID | str, event: Event, *, latest: int) -> None:
        """An ephemeral event: carries the user's latest durable event_id, never replayed."""
        payload = {**event.model_dump(mode="json"), "event_id": latest, "ts": now_ts()}
        await self.redis.publish(self.channel, self._message(user_id, event.name, payload, None))

    async def disconnect_user(self, user_id: uuid.UUID | str) -> None:
        """Close every socket of the user, whichever server process holds it.

        Each server tells its own sockets `session.revoked` right before closing them, so
        the notice cannot overtake or trail the disconnect.
        """
        await self.redis.publish(self.settings.key("revocations"), str(user_id))

    async def disconnect_session(self, user_id: uuid.UUID | str, session_id: uuid.UUID | str) -> None:
        """Close the sockets of one session of the user (signed in with its access tokens)."""
        await self.redis.publish(self.settings.key("revocations"), f"{user_id} {session_id}")
