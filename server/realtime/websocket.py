"""RFC 6455 on the bare transport for new Engine.IO websocket sessions: aiohttp parses the
upgrade request, then lets go of the connection (docs/architecture.md, sockets)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from typing import Any, Protocol

from aiohttp.web import Request, StreamResponse

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
NORMAL, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1000, 1002, 1007, 1009
# Codes a peer may send (RFC 6455 7.4; 1004-1006 and 1015 are never sent, 1016-2999 unassigned).
_PEER_CODES = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))
MAX_FRAGMENTS = 1024  # pieces of one message: empty continuation frames cost a list entry each
ABORT_AFTER_SECONDS = 2.0  # a connection we closed whose peer does not read what is left


class Receiver(Protocol):
    def on_message(self, data: str | bytes) -> None: ...
    def on_lost(self) -> None: ...



def accept_key(request: Request) -> str | None:
    """Sec-WebSocket-Accept for a valid version-13 upgrade request, else None (aiohttp's path answers it).

    Extensions the client offers (permessage-deflate, as browsers do) are not accepted.
    """
    headers = request.headers
    if request.version < (1, 1) or "upgrade" not in headers.get("Connection", "").lower() \
            or headers.get("Sec-WebSocket-Version") != "13":
        return None
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except ValueError:
        return None
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


class TakenOver(StreamResponse):
    """What the handler hands back to aiohttp once the connection is ours: nothing left to write."""

    def __init__(self) -> None:
        super().__init__(status=101)

    @property
    def keep_alive(self) -> bool:
        return False

    async def prepare(self, request: Any) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class WebSocketStream(asyncio.Protocol):
    """One server-side websocket on its transport: frames in, frames out, nothing held between them.

    Writes never wait for the peer to drain (a client that stops reading stops answering
    pings and is dropped by the heartbeat). No extensions, no subprotocol.
    """

    __slots__ = ("transport", "receiver", "max_size", "buffer", "needed", "fragments",
                 "fragment_kind", "fragment_bytes", "close_sent", "lost", "paused", "__weakref__")

    def __init__(self, transport: asyncio.Transport, max_size: int) -> None:
        self.transport: asyncio.Transport | None = transport
        self.receiver: Receiver | None = None
        self.max_size = max_size
        self.buffer: bytearray | None = None  # an incomplete frame
        self.needed = 0  # bytes the buffer must hold before the frame can be complete
        self.fragments: list[bytes] | None = None  # a message arriving in pieces
        self.fragment_kind = 0
        self.fragment_bytes = 0
        self.close_sent = False
        self.lost: asyncio.Future[None] | None = None  # made when someone waits for the end
        self.paused = 0  # reasons not to read now: the receiver's backlog, our own writes backing up

    @classmethod
    def take_over(cls, request: Request, accept: str, max_size: int) -> WebSocketStream:
        """Answer the upgrade and take the connection from aiohttp: its handler, request and
        parser are freed when the handler returns `TakenOver()`; the transport stays open."""
        handler = request.protocol
        transport = request.transport
        assert transport is not None  # (uvloop's transports are no asyncio.Transport instances)
        stream = cls(transport, max_size)
        transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n")
        # Frames the client sent right behind its request wait in aiohttp's buffer.
        tail, handler._message_tail = handler._message_tail, b""
        handler.keep_alive(False)  # cancels its keep-alive timer
        if handler._manager is not None:  # no longer one of aiohttp's connections (shutdown)
            handler._manager.connection_lost(handler, None)
        handler.transport = None  # so its start() loop ends without closing the transport
        transport.set_protocol(stream)
        if not transport.is_reading():
            transport.resume_reading()
        if tail:
            asyncio.get_running_loop().call_soon(stream.data_received, tail)
        return stream

    # aiohttp's WebSocketResponse interface, as far as engine.py uses it

    @property
    def closed(self) -> bool:
        return self.close_sent or self.transport is None

    def exception(self) -> BaseException | None:
        return None

    def send_str(self, text: str) -> None:
        self._send(TEXT, text.encode())

    def send_bytes(self, data: bytes) -> None:
        self._send(BINARY, data)

    def end(self, code: int = NORMAL) -> None:
        """Close now: the close frame, then the connection, without waiting for the peer's answer."""
        self._fail(code)

    async def close(self, code: int = NORMAL) -> None:
        """Send a close frame and wait until the peer answers it and the connection is gone."""
        self._close(code)
        if self.transport is None:
            return
        if self.lost is None:
            self.lost = asyncio.get_running_loop().create_future()
        await asyncio.shield(self.lost)

    # the transport's callbacks

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        if self.buffer is not None:
            self.buffer += data
            if len(self.buffer) < self.needed:
                return  # a large frame trickling in is not parsed again on every read
            data = bytes(self.buffer)
            self.buffer = None
        pos = self._frames(data)
        if pos < len(data) and self.transport is not None and not self.transport.is_closing():
            self.buffer = bytearray(data[pos:])

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buffer = self.fragments = None
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.on_lost()

    def pause_writing(self) -> None:
        # Our writes back up (the peer does not read): read no more of what it sends (its pings
        # would each add a pong) until they drain. Events are still written (class docstring).
        self.pause()

    def resume_writing(self) -> None:
        self.resume()

    # flow control, for the receiver and for our own writes

    def pause(self) -> None:
        """Stop reading: no frame is parsed until resume(), and the kernel's buffer fills."""
        self.paused += 1
        if self.paused == 1 and self.transport is not None and self.transport.is_reading():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused == 0:
            return
        self.paused -= 1
        if self.paused or self.transport is None:
            return
        self.transport.resume_reading()
        if self.buffer is not None and len(self.buffer) >= self.needed:
            # What arrived before the pause, parsed on a turn of its own: resume() may be called
            # from inside the transport's callbacks (resume_writing), which a close would upset.
            asyncio.get_running_loop().call_soon(self.data_received, b"")
    # frames

    def _frames(self, data: bytes) -> int:
        """Handle every complete frame in `data`; return where the first incomplete one starts."""
        pos, end = 0, len(data)
        self.needed = 0
        while end - pos >= 2 and not self.paused and self.transport is not None \
                and not self.transport.is_closing():
            first, second = data[pos], data[pos + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, header = struct.unpack_from("!H", data, pos + 2)[0], 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, header = struct.unpack_from("!Q", data, pos + 2)[0], 10
            kind = first & 0x0F
            if first & 0x70 or not second & 0x80:  # reserved bits without an extension, or unmasked
                return self._fail(PROTOCOL_ERROR)
            if kind >= CLOSE and (length > 125 or not first & 0x80):
                return self._fail(PROTOCOL_ERROR)
            if length > self.max_size:
                return self._fail(TOO_BIG)
            start = pos + header + 4
            if end - start < length:
                self.needed = start + length - pos
                break
            payload = _unmask(data[start - 4:start], data[start:start + length])
            pos = start + length
            self._frame(bool(first & 0x80), kind, payload)
        return pos

    def _frame(self, fin: bool, kind: int, payload: bytes) -> None:
        if kind == PING:
            self._send(PONG, payload)
        elif kind == PONG:
            pass
        elif kind == CLOSE:
            self._close(_answer_to_close(payload))
            self._drop()
        elif kind == CONTINUATION:
            if self.fragments is None:
                self._fail(PROTOCOL_ERROR)
                return
            self.fragments.append(payload)
            self.fragment_bytes += len(payload)
            if self.fragment_bytes > self.max_size or len(self.fragments) > MAX_FRAGMENTS:
                self._fail(TOO_BIG)
            elif fin:
                whole, self.fragments = b"".join(self.fragments), None
                self._message(self.fragment_kind, whole)
        elif kind in (TEXT, BINARY):
            if self.fragments is not None:
                self._fail(PROTOCOL_ERROR)
            elif fin:
                self._message(kind, payload)
            else:
                self.fragments, self.fragment_kind, self.fragment_bytes = [payload], kind, len(payload)
        else:
            self._fail(PROTOCOL_ERROR)

    def _message(self, kind: int, payload: bytes) -> None:
        if self.close_sent or self.receiver is None:
            return  # closing: only the peer's close frame matters now
        if kind == TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._fail(INVALID_DATA)
                return
            self.receiver.on_message(text)
        else:
            self.receiver.on_message(payload)

    def _send(self, kind: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or self.close_sent or transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | kind, n))
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | kind, 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | kind, 127, n)
        transport.write(header + payload)

    def _close(self, code: int) -> None:
        if not self.close_sent:
            self._send(CLOSE, struct.pack("!H", code))
            self.close_sent = True

    def _fail(self, code: int) -> int:
        """The peer broke the protocol: say why, and drop the connection (RFC 6455 7.1.7)."""
        self._close(code)
        self._drop()
        return 0

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.close()  # after what is buffered; connection_lost follows
            # A peer that does not read what is buffered would keep it open: not for long.
            asyncio.get_running_loop().call_later(ABORT_AFTER_SECONDS, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _answer_to_close(payload: bytes) -> int:
    """The code to answer a peer's close frame with: its own, or why the frame is invalid."""
    if not payload:
        return NORMAL
    if len(payload) == 1:
        return PROTOCOL_ERROR
    code = struct.unpack_from("!H", payload)[0]
    if code not in _PEER_CODES:
        return PROTOCOL_ERROR
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        return INVALID_DATA
    return code


def _unmask(mask: bytes, payload: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    key = int.from_bytes((mask * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")

