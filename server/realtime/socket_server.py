"""python-socketio's AsyncServer on lean engine.io sessions: after-reply hooks, a join deadline,
and the frame policy (anything but [event name, argument] is an invalid event)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import socketio

from server.realtime.engine import LeanEngineServer

Hook = Callable[[], Awaitable[None]]
# A frame that is not [event name, ...], or that names an event python-socketio keeps for
# itself (a client's "disconnect" would run our disconnect handler), reaches the catch-all
# under this name: answered, counted against the socket's event limit, nothing else.
INVALID_EVENT = "<invalid frame>"
RESERVED_EVENTS = frozenset({"connect", "disconnect", "connect_error", "disconnecting",
                             "newListener", "removeListener", "*"})  # "*" would call the catch-all unnamed
_after_reply: ContextVar[list[Hook] | None] = ContextVar("after_reply", default=None)


def after_reply(hook: Hook) -> None:
    """Run `hook` once the reply to the event (or connect) being handled is queued."""
    hooks = _after_reply.get()
    if hooks is None:
        raise RuntimeError("after_reply() outside a Socket.IO handler")
    hooks.append(hook)


class SocketIOServer(socketio.AsyncServer):
    def __init__(self, *args: Any, connect_timeout: float = 45.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout
        self._join_deadlines: dict[str, asyncio.TimerHandle] = {}
        self._handling: dict[str, set[asyncio.Task[Any]]] = {}  # sid -> events being handled

    def _engineio_server_class(self) -> type[LeanEngineServer]:
        return LeanEngineServer

    async def _handle_connect(self, eio_sid: str, namespace: str, data: Any) -> None:
        await self._with_after_reply(super()._handle_connect(eio_sid, namespace, data))
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace or "/")
        if sid is not None and self.manager.is_connected(sid, namespace or "/"):
            deadline = self._join_deadlines.pop(eio_sid, None)
            if deadline is not None:
                deadline.cancel()

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # No API.md event carries binary data: attachments would pile up unbounded until the
        # packet that announced them is complete.
        if isinstance(data, bytes) or (isinstance(data, str) and data[:1] in ("5", "6")):
            ack_id = None
            if isinstance(data, str) and data[:1] == "5":  # a binary event may still ask for its answer
                with contextlib.suppress(ValueError):
                    ack_id = self.packet_class(encoded_packet=data).id
            await self._handle_event(eio_sid, "/", ack_id, [INVALID_EVENT])
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except ValueError:  # undecodable (bad JSON, lone surrogates) or an unknown packet type
            await self._handle_event(eio_sid, "/", None, [INVALID_EVENT])

    async def _handle_event(self, eio_sid: str, namespace: str, id: Any, data: Any) -> None:
        if not (isinstance(data, list) and data and isinstance(data[0], str)) or data[0] in RESERVED_EVENTS:
            data = [INVALID_EVENT]
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_event_internal(self, server: Any, sid: str, eio_sid: str, data: Any,
                                     namespace: str, id: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        handling = self._handling.setdefault(sid, set())
        handling.add(task)
        try:
            await self._with_after_reply(
                super()._handle_event_internal(server, sid, eio_sid, data, namespace, id))
        finally:
            handling.discard(task)
            if not handling and self._handling.get(sid) is handling:
                del self._handling[sid]

    async def settle(self, sid: str, timeout: float) -> None:
        """Wait (bounded) until the socket's events being handled, other than the caller's, have sent their acks."""
        others = self._handling.get(sid, set()) - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=timeout)

    async def _with_after_reply(self, handling: Awaitable[None]) -> None:
        hooks: list[Hook] = []
        token = _after_reply.set(hooks)
        try:
            await handling
        finally:
            _after_reply.reset(token)
            for hook in hooks:
                try:
                    await hook()
                except Exception:
                    self.logger.exception("after-reply hook failed")

    async def _handle_eio_connect(self, eio_sid: str, environ: Mapping[str, Any]) -> None:
        await super()._handle_eio_connect(eio_sid, environ)
        loop = asyncio.get_running_loop()
        self._join_deadlines[eio_sid] = loop.call_later(
            self.connect_timeout, self._close_unjoined, eio_sid)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        deadline = self._join_deadlines.pop(eio_sid, None)
        if deadline is not None:
            deadline.cancel()
        await super()._handle_eio_disconnect(eio_sid, reason)

    def _close_unjoined(self, eio_sid: str) -> None:
        self._join_deadlines.pop(eio_sid, None)
        if self.manager.sid_from_eio_sid(eio_sid, "/") is None:
            self.start_background_task(self._close_quietly, eio_sid)

    async def _close_quietly(self, eio_sid: str) -> None:
        with contextlib.suppress(Exception):
            await self.eio.disconnect(eio_sid)
