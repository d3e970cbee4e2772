"""The Redis client manager: room emits from Redis, durable events through the per-user feeds,
and a per-socket gate that holds live events while a backlog goes out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from server.realtime.feeds import Feeds
from server.realtime.outbox import Sequenced

ROOM_PREFIX = "user:"
RESUBSCRIBE_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)  # fast: after Redis is back, clients wait on us


class Gate:
    __slots__ = ("holds", "held", "floor")

    def __init__(self) -> None:
        self.holds = 0
        self.held: list[tuple[int, str, Any]] = []
        self.floor: int | None = None


class UserRoomManager(socketio.AsyncRedisManager):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gates: dict[str, Gate] = {}
        self.joined: dict[str, list[Any]] = {}  # sid -> rooms other than its own and None
        self.subscribed = asyncio.Event()
        self.feeds: Feeds | None = None  # set by the server once its resources exist
        self.on_resubscribed: Callable[[], Awaitable[None]] | None = None
        self._subscriptions = 0

    # python-socketio subscribes to the Redis channel when the first client connects, and
    # events published before the SUBSCRIBE lands are lost: the server subscribes at
    # startup instead and waits for Redis to confirm it.

    def _redis_connect(self) -> None:
        super()._redis_connect()
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=False)

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        # python-socketio backs off up to 60 s; events published meanwhile are caught up
        # from the outbox, but clients should not wait seconds for Redis to be tried again.
        failures = 0
        while True:
            try:
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                async for message in self.pubsub.listen():
                    failures = 0
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RESUBSCRIBE_DELAYS[min(failures, len(RESUBSCRIBE_DELAYS) - 1)]
                if failures == 0:
                    self._get_logger().warning("Redis pub/sub lost (%s); resubscribing", exc)
                failures += 1
                await asyncio.sleep(delay)

    async def _listen(self) -> AsyncIterator[Any]:
        channel = self.channel.encode()
        async for message in self._redis_listen_with_retries():
            kind = message.get("type")
            if kind == "subscribe":
                self._subscriptions += 1
                self.subscribed.set()
                if self._subscriptions > 1 and self.on_resubscribed is not None:
                    asyncio.create_task(self.on_resubscribed())
            elif kind == "message" and message.get("channel") == channel and "data" in message:
                yield message["data"]

    # python-socketio finds the rooms of a leaving socket by scanning every room of the
    # namespace: O(connections) per disconnect, seconds to close thousands. A socket here
    # is in one or two rooms, so they are remembered instead.

    def basic_enter_room(self, sid: str, namespace: str, room: Any, eio_sid: Any = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if room is not None and room != sid:
            rooms = self.joined.setdefault(sid, [])
            if room not in rooms:
                rooms.append(room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self.joined.get(sid)
        if rooms and room in rooms:
            rooms.remove(room)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        if namespace not in self.rooms:
            return
        for room in (*self.joined.pop(sid, ()), sid, None):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    # per-socket replay gates

    def hold(self, sid: str) -> None:
        """Hold this socket's live durable events until `release`."""
        gate = self.gates.get(sid)
        if gate is None:
            gate = self.gates[sid] = Gate()
        gate.holds += 1

    def release(self, sid: str, floor: int | None) -> list[tuple[str, Any]]:
        """End one hold. The last one returns the held events above the floor, in order,
        and keeps holding while the caller sends them: call again until it returns []."""
        gate = self.gates.get(sid)
        if gate is None:
            return []
        if floor is not None and (gate.floor is None or floor > gate.floor):
            gate.floor = floor
        if gate.holds > 1:
            gate.holds -= 1
            return []
        held, gate.held = gate.held, []
        held.sort(key=lambda item: item[0])
        batch = [(name, payload) for seq, name, payload in held
                 if gate.floor is None or seq > gate.floor]
        if not batch:
            gate.holds = 0
        return batch

    def forget(self, sid: str) -> None:
        self.gates.pop(sid, None)

    # delivery

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        seq = message.get("seq")
        room = message.get("room")
        data = message.get("data")
        if (isinstance(seq, int) and self.feeds is not None and isinstance(room, str)
                and room.startswith(ROOM_PREFIX) and isinstance(data, list) and len(data) == 1):
            await self.feeds.offer(room[len(ROOM_PREFIX):], seq, message["event"], data[0])
            return
        if message.get("callback") is not None or message.get("binary") or self.server is None:
            await super()._handle_emit(message)
            return
        await self._send(message.get("namespace") or "/", room, message["event"], data, None)

    async def deliver(self, user: str, events: list[Sequenced]) -> None:
        """Durable events, in order, to the user's sockets on this server (past their gates)."""
        for seq, name, payload in events:
            await self._send("/", ROOM_PREFIX + user, name, [payload], seq)

    async def _send(self, namespace: str, room: Any, name: str, data: list[Any], seq: int | None) -> None:
        # python-socketio's emit scans the payload for binary parts, then makes a task per
        # recipient and waits for them all. What arrives here is JSON, and a user's room has
        # a socket or two whose send only queues the packet: deliver in line.
        if namespace not in self.rooms or self.server is None:
            return
        eio_pkt = None
        for sid, eio_sid in self.get_participants(namespace, room):
            gate = self.gates.get(sid) if seq is not None else None
            if gate is not None:
                if gate.holds:
                    gate.held.append((seq, name, data[0]))
                    continue
                if gate.floor is not None and seq <= gate.floor:
                    continue
            if eio_pkt is None:
                pkt = self.server.packet_class(sio_packet.EVENT, data=[name, *data], namespace=namespace,
                                               binary=False)
                eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, pkt.encode())
            try:
                await self.server._send_eio_packet(eio_sid, eio_pkt)
            except Exception:  # a socket closing under us must not starve the others
                self._get_logger().debug("could not send to %s", sid, exc_info=True)
