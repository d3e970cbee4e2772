"""The Redis client manager of the server, with a per-socket gate that keeps replays in order.

While a socket replays its backlog, live events for it are held instead of sent; once
the backlog is out they are released in id order, and any event at or below the
backlog's floor (already replayed) is dropped, so the client sees every event once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

EventKey = tuple[int, int]


def event_key(event_id: str) -> EventKey:
    """Stream ids ("1732600000000-3") compared as numbers, not strings."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


class Gate:
    __slots__ = ("holds", "held", "floor")

    def __init__(self) -> None:
        self.holds = 0
        self.held: list[tuple[EventKey, str, Any]] = []
        self.floor: EventKey | None = None


class UserRoomManager(socketio.AsyncRedisManager):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gates: dict[str, Gate] = {}
        self.joined: dict[str, list[Any]] = {}  # sid -> rooms other than its own and None
        self.subscribed = asyncio.Event()

    # python-socketio subscribes to the Redis channel when the first client connects, and
    # events published before the SUBSCRIBE lands are lost: the server subscribes at
    # startup instead and waits for Redis to confirm it.

    def _redis_connect(self) -> None:
        super()._redis_connect()
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=False)

    async def _listen(self) -> AsyncIterator[Any]:
        channel = self.channel.encode()
        async for message in self._redis_listen_with_retries():
            kind = message.get("type")
            if kind == "subscribe":
                self.subscribed.set()
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

    def hold(self, sid: str) -> None:
        """Hold this socket's live events until `release`."""
        gate = self.gates.get(sid)
        if gate is None:
            gate = self.gates[sid] = Gate()
        gate.holds += 1

    def release(self, sid: str, floor: EventKey | None) -> list[tuple[str, Any]]:
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
        batch = [(name, payload) for key, name, payload in held
                 if gate.floor is None or key > gate.floor]
        if not batch:
            gate.holds = 0
        return batch

    def forget(self, sid: str) -> None:
        self.gates.pop(sid, None)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        skip = message.get("skip_sid")
        skip = list(skip) if isinstance(skip, list) else ([skip] if skip else [])
        if self.gates:
            skip += self._gated_sids(message)
        if message.get("callback") is not None or message.get("binary") or self.server is None:
            await super()._handle_emit({**message, "skip_sid": skip})
            return
        # python-socketio's emit scans the payload for binary parts, then makes a task per
        # recipient and waits for them all. What arrives here is JSON, and a user's room has
        # a socket or two whose send only queues the packet: deliver in line.
        namespace = message.get("namespace") or "/"
        if namespace not in self.rooms:
            return
        pkt = self.server.packet_class(
            sio_packet.EVENT, data=[message["event"], *message["data"]], namespace=namespace,
            binary=False)
        eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, pkt.encode())
        for sid, eio_sid in self.get_participants(namespace, message.get("room")):
            if sid in skip:
                continue
            try:
                await self.server._send_eio_packet(eio_sid, eio_pkt)
            except Exception:  # a socket closing under us must not starve the others
                self._get_logger().debug("could not send to %s", sid, exc_info=True)

    def _gated_sids(self, message: dict[str, Any]) -> list[str]:
        room = message.get("room")
        namespace = message.get("namespace") or "/"
        if not isinstance(room, str) or room not in self.rooms.get(namespace, {}):
            return []
        gated: list[str] = []
        key: EventKey | None = None
        for sid, _ in self.get_participants(namespace, room):
            gate = self.gates.get(sid)
            if gate is None:
                continue
            if key is None:
                data = message.get("data")
                payload = data[0] if isinstance(data, list) and len(data) == 1 else None
                event_id = payload.get("event_id") if isinstance(payload, dict) else None
                if not isinstance(event_id, str):
                    return []  # not a history event (e.g. session.revoked): never held
                key = event_key(event_id)
            if gate.holds:
                gate.held.append((key, message["event"], payload))
                gated.append(sid)
            elif gate.floor is not None and key <= gate.floor:
                gated.append(sid)
        return gated
