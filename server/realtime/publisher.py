"""The one way any process tells a user something: Redis Stream history, then the room.

Each event is appended to the user's stream (which gives it a monotonic id and makes it
replayable) and published to room `user:{id}` on the Socket.IO Redis channel, so
whichever server process holds the user's sockets delivers it. Both happen in one Lua
script, one round trip: the event id is known only inside Redis, and a second trip just
to publish would add its latency to every delivery. The message is the emit that
python-socketio's AsyncRedisManager publishes (as socket.io's redis-emitter does for
Node); the real-time tests run it through real python-socketio servers.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from db.session import after_commit
from server.config import Settings
from server.errors import ValidationFailed
from server.realtime.events import Event

EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
HISTORY_COUNT = 1000
HISTORY_SECONDS = 24 * 3600
STREAM_TTL_SECONDS = 30 * 86400

# XADD, then (amortised, every ~100 events past the floor) trim to what is older than
# both the newest HISTORY_COUNT entries and the HISTORY_SECONDS window; then PUBLISH the
# emit with the new id spliced into the payload (ARGV[7] .. id .. ARGV[8]).
_APPEND_AND_EMIT = """
local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local keep = tonumber(ARGV[3])
local len = redis.call('XLEN', KEYS[1])
if len > keep + 100 then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', keep)
  local by_count = newest[#newest][1]
  local by_time = ARGV[4] .. '-0'
  local function older(a, b)
    local ams, aseq = string.match(a, '(%d+)-(%d+)')
    local bms, bseq = string.match(b, '(%d+)-(%d+)')
    if tonumber(ams) ~= tonumber(bms) then return tonumber(ams) < tonumber(bms) end
    return tonumber(aseq) < tonumber(bseq)
  end
  local min_id = by_count
  if older(by_time, by_count) then min_id = by_time end
  redis.call('XTRIM', KEYS[1], 'MINID', min_id)
end
redis.call('PUBLISH', ARGV[6], ARGV[7] .. ',"event_id":"' .. id .. '"' .. ARGV[8])
return id
"""


def user_room(user_id: uuid.UUID | str) -> str:
    return f"user:{user_id}"


class Publisher:
    def __init__(self, redis: Redis, settings: Settings, metrics: Any = None) -> None:
        self.redis = redis
        self.settings = settings
        self.metrics = metrics
        self.channel = settings.key("socketio")  # the servers' AsyncRedisManager channel
        self.host_id = uuid.uuid4().hex  # emits from here are never "our own" to a server
        self._append_and_emit = redis.register_script(_APPEND_AND_EMIT)

    def stream_key(self, user_id: uuid.UUID | str) -> str:
        return self.settings.key("events", user_id)

    async def publish(self, user_id: uuid.UUID | str, event: Event) -> str:
        """Record the event in the user's history and deliver it to their sockets."""
        payload = event.model_dump(mode="json")
        payload["ts"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data = orjson.dumps(payload)  # a non-empty object: ends with "}"
        head = b'{"method":"emit","event":' + orjson.dumps(event.name) + b',"data":[' + data[:-1]
        tail = (b'}],"binary":false,"namespace":"/","room":' + orjson.dumps(user_room(user_id))
                + b',"skip_sid":null,"callback":null,"host_id":"' + self.host_id.encode() + b'"}')
        now_ms = int(time.time() * 1000)
        raw_id = await self._append_and_emit(
            keys=[self.stream_key(user_id)],
            args=[event.name, data, HISTORY_COUNT, now_ms - HISTORY_SECONDS * 1000,
                  STREAM_TTL_SECONDS * 1000, self.channel, head, tail],
        )
        if self.metrics is not None:
            self.metrics.events_published.labels(event.name).inc()
        return raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)

    async def disconnect_user(self, user_id: uuid.UUID | str) -> None:
        """Close every socket of the user, whichever server process holds it.

        Each server tells its own sockets `session.revoked` right before closing them, so
        the notice cannot overtake or trail the disconnect.
        """
        await self.redis.publish(self.settings.key("revocations"), str(user_id))

    async def disconnect_session(self, user_id: uuid.UUID | str, session_id: uuid.UUID | str) -> None:
        """Close the sockets of one session of the user (signed in with its access tokens)."""
        await self.redis.publish(self.settings.key("revocations"), f"{user_id} {session_id}")

    async def backlog(
        self, user_id: uuid.UUID | str, last_event_id: str, *, page: int = 1000
    ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        """Events after `last_event_id`, oldest first, and the floor: the newest id read.

        Every event at or below the floor was in the stream when it was read, so it is
        either in the backlog or already seen by the client; live copies of it are
        duplicates.
        """
        if not isinstance(last_event_id, str) or not EVENT_ID.match(last_event_id):
            raise ValidationFailed(
                "last_event_id must look like '1732600000000-0'",
                details=[{"field": "last_event_id", "message": "invalid event id"}],
            )
        key = self.stream_key(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(key, min=f"({last_event_id}", max="+", count=page)
            pipe.xrevrange(key, count=1)
            entries, newest = await pipe.execute()
        floor = newest[0][0].decode() if newest else None
        events: list[tuple[str, dict[str, Any]]] = []
        while entries:
            for raw_id, fields in entries:
                payload = orjson.loads(fields[b"d"])
                payload["event_id"] = raw_id.decode()
                events.append((fields[b"e"].decode(), payload))
            floor = events[-1][1]["event_id"]
            if len(entries) < page:
                break
            entries = await self.redis.xrange(key, min=f"({floor}", max="+", count=page)
        return events, floor

    async def latest_event_id(self, user_id: uuid.UUID | str) -> str | None:
        newest = await self.redis.xrevrange(self.stream_key(user_id), count=1)
        return newest[0][0].decode() if newest else None


def notify(session: AsyncSession, user_id: uuid.UUID, event: Event) -> None:
    """Publish `event` to the user once the session's transaction commits."""
    publisher: Publisher = session.info["publisher"]
    after_commit(session, lambda: publisher.publish(user_id, event))
