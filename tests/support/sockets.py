"""A real python-socketio client, as a studio frontend uses it, that records what it receives."""

from __future__ import annotations

import asyncio
from typing import Any

import socketio


class SocketClient:
    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.connect_errors: list[Any] = []
        self.disconnected = asyncio.Event()
        self._changed = asyncio.Event()
        self.sio.on("*", self._record)
        self.sio.on("connect_error", self._connect_error)
        self.sio.on("disconnect", self._disconnect)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))
        self._changed.set()

    async def _connect_error(self, data: Any) -> None:
        self.connect_errors.append(data)

    async def _disconnect(self, reason: Any = None) -> None:
        self.disconnected.set()
        self._changed.set()

    async def connect(self, url: str, *, token: str | None, last_event_id: str | None = None,
                      transports: tuple[str, ...] = ("websocket",), **auth: Any) -> None:
        if token is not None:
            auth["token"] = token
        if last_event_id is not None:
            auth["last_event_id"] = last_event_id
        self.disconnected.clear()
        await self.sio.connect(url, auth=auth, transports=list(transports),
                               socketio_path="socket.io", wait_timeout=5)

    async def call(self, event: str, data: Any = None, timeout: float = 5) -> Any:
        return await self.sio.call(event, data, timeout=timeout)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [payload for event, payload in self.events if event == name]

    async def wait_for(self, name: str, count: int = 1, timeout: float = 5) -> list[dict[str, Any]]:
        """Wait until `count` events called `name` have arrived; returns them all."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.named(name)) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{len(self.named(name))}/{count} {name!r} events: {self.events}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return self.named(name)

    async def wait_disconnected(self, timeout: float = 5) -> None:
        await asyncio.wait_for(self.disconnected.wait(), timeout)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
