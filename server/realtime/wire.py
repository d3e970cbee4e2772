"""What goes on the wire: orjson for Socket.IO packets and a deliberate deflate choice."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
from aiohttp.web import WebSocketResponse
from engineio.async_drivers.aiohttp import WebSocket

from server.json_io import dumps as json_dumps


class OrjsonCodec:
    """The `json` module interface python-socketio and its Redis manager call."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return json_dumps(value).decode()

    @staticmethod
    def loads(raw: str | bytes, **_: Any) -> Any:
        return orjson.loads(raw)


def websocket_class(*, compress: bool) -> type[WebSocket]:
    """engine.io's aiohttp websocket, with permessage-deflate accepted only when asked for.

    aiohttp's WebSocketResponse accepts the deflate that browsers offer unless told not
    to, and each such socket then keeps its own zlib state (~95 KB): for small event
    frames that memory buys nothing.
    """

    class ChosenCompressionWebSocket(WebSocket):
        # engine.io sid -> its websocket and the task serving it
        open: ClassVar[dict[str, tuple[WebSocketResponse, asyncio.Task[Any]]]] = {}

        async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
            request = environ["aiohttp.request"]
            self._sock = WebSocketResponse(
                max_msg_size=self.server.max_http_buffer_size, compress=compress
            )
            await self._sock.prepare(request)
            self.environ = environ
            sid = getattr(getattr(self.handler, "__self__", None), "sid", None)
            task = asyncio.current_task()
            if sid is not None and task is not None:
                self.open[sid] = (self._sock, task)
            try:
                await self.handler(self)
            finally:
                if sid is not None:
                    self.open.pop(sid, None)
            return self._sock

        async def wait(self) -> str | bytes:
            # engine.io keeps reading a socket it has closed until the peer goes away; a
            # client we cut off (flooding, revoked) must not keep its transport that way.
            socket = getattr(self.handler, "__self__", None)
            if socket is not None and socket.closed:
                raise OSError("closed by the server")
            return await super().wait()

    ChosenCompressionWebSocket.open = {}  # one registry per server
    return ChosenCompressionWebSocket
