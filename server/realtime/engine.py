"""python-engineio's server with websocket sessions that cost one task instead of five: direct
writes, reads in the request's task, one heartbeat wheel (docs/architecture.md, sockets)."""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import engineio
from aiohttp import WSMessage, WSMsgType
from aiohttp.web import Request, StreamResponse, WebSocketResponse
from engineio import exceptions, packet
from engineio.async_socket import AsyncSocket

from server.realtime.websocket import TakenOver, WebSocketStream, accept_key

log = logging.getLogger(__name__)

CLOSE_GRACE_SECONDS = 1.0  # for the peer's close frame before the transport is dropped
# Sends never wait for the peer to drain: one client that stops reading must not hold up
# the emits or pings of everyone else (engine.io's queue was unbounded too). A client that
# stops reading stops answering pings and is closed within ping_interval + ping_timeout.
NEVER_WAIT_TO_DRAIN = 2**62
UPGRADE_TIMEOUT_SECONDS = 10.0  # as Node's engine.io: probe to UPGRADE
INBOX_HIGH = 64  # a stream's messages waiting for their session: past this it stops reading
YIELD_EVERY = 16  # messages handled before the loop gets a turn
PINGS_PER_TURN = 32  # pings sent before other work (deliveries) gets the loop again


class RequestEnviron(Mapping[str, Any]):
    """The WSGI-style environ engine.io and python-socketio read, as a view of the request.

    engine.io's aiohttp driver copies every header into a dict that lives as long as the
    connection (~1.4 KB); the request itself is kept alive by aiohttp anyway.
    """

    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request

    def __getitem__(self, key: str) -> Any:
        request = self.request
        if key.startswith("HTTP_"):
            values = request.headers.getall(key[5:].replace("_", "-"), None)
            if values is None:
                raise KeyError(key)
            return ",".join(values)
        if key in _CONTENT_HEADERS:
            value = request.headers.get(_CONTENT_HEADERS[key])
            if value is None:
                raise KeyError(key)
            return value
        fixed = _FIXED_KEYS.get(key)
        if fixed is None:
            raise KeyError(key)
        return fixed(request)

    def __iter__(self) -> Iterator[str]:
        yield from _FIXED_KEYS
        for name in self.request.headers:
            upper = name.upper()
            if upper in ("CONTENT-TYPE", "CONTENT-LENGTH"):
                yield upper.replace("-", "_")
            else:
                yield "HTTP_" + upper.replace("-", "_")

    def __len__(self) -> int:
        return sum(1 for _ in self)


_CONTENT_HEADERS = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}
_FIXED_KEYS: dict[str, Callable[[Request], Any]] = {
    "REQUEST_METHOD": lambda r: r.method,
    "QUERY_STRING": lambda r: r.query_string or "",
    "RAW_URI": lambda r: r.path_qs,
    "PATH_INFO": lambda r: r.path,
    "SCRIPT_NAME": lambda r: "",
    "SERVER_PROTOCOL": lambda r: f"HTTP/{r.version[0]}.{r.version[1]}",
    "SERVER_SOFTWARE": lambda r: "aiohttp",
    "SERVER_NAME": lambda r: "aiohttp",
    "SERVER_PORT": lambda r: "0",
    "REMOTE_ADDR": lambda r: "127.0.0.1",  # as engine.io's driver: the peer is not exposed
    "REMOTE_PORT": lambda r: "0",
    "wsgi.url_scheme": lambda r: r.headers.get("X-Forwarded-Proto", "http"),
    "wsgi.input": lambda r: r.content,
    "wsgi.async": lambda r: True,
    "aiohttp.request": lambda r: r,
}


def environ_snapshot(request: Request) -> dict[str, Any]:
    """What python-socketio keeps of a websocket's request for the connection's life: a few
    strings, not the request (which goes with aiohttp once the connection is taken over)."""
    environ = {"REQUEST_METHOD": request.method, "PATH_INFO": request.path,
               "QUERY_STRING": request.query_string, "REMOTE_ADDR": "127.0.0.1",
               "wsgi.url_scheme": request.headers.get("X-Forwarded-Proto", "http")}
    for header in ("Host", "Origin", "User-Agent"):
        value = request.headers.get(header)
        if value is not None:
            environ["HTTP_" + header.upper().replace("-", "_")] = value
    return environ


class LeanSocket(AsyncSocket):
    """One Engine.IO session; on a websocket it has no queue and no task of its own."""

    # Slots, not an instance dict: ~0.4 KB less per connection.
    __slots__ = ("server", "sid", "queue", "pending", "ws", "transport", "reader", "due",
                 "last_ping", "connected", "upgrading", "upgraded", "closing", "closed",
                 "_session", "inbox", "held", "probing", "polls")

    def __init__(self, server: LeanEngineServer, sid: str, *, polling: bool) -> None:
        # BaseSocket.__init__ would make the asyncio.Queue (~3 KB) a websocket never uses.
        self.server = server
        self.sid = sid
        self.queue: asyncio.Queue[Any] | None = server.create_queue() if polling else None
        self.pending: list[packet.Packet] | None = None  # sent before the websocket is open
        self.ws: WebSocketResponse | WebSocketStream | None = None
        self.transport: asyncio.Transport | None = None
        self.reader: asyncio.Task[Any] | None = None  # the request task reading self.ws
        self.due = 0  # heartbeat slot
        self.last_ping: float | None = time.time()
        self.connected = False
        self.upgrading = False
        self.upgraded = False
        self.closing = False
        self.closed = False
        self._session: dict[str, Any] | None = None
        self.inbox: collections.deque[str | bytes] | None = None  # stream messages waiting; one task drains them
        self.held: WebSocketStream | None = None  # the stream paused because the inbox filled up
        self.probing: Upgrade | None = None  # a polling session's upgrade in progress
        self.polls = 0  # long-poll requests in flight

    @property
    def session(self) -> dict[str, Any]:
        """engine.io's per-session dict, made when first used."""
        if self._session is None:
            self._session = {}
        return self._session

    @session.setter
    def session(self, value: dict[str, Any]) -> None:
        self._session = value

    # sending

    async def send(self, pkt: packet.Packet) -> None:
        """Send a packet: written to the websocket now, else queued for the next poll."""
        if self.closed:
            raise exceptions.SocketIsClosedError()
        ws = self.ws
        if ws is not None:
            try:
                await _write(ws, pkt)
            except Exception:  # the connection is going; its reader ends the session
                log.debug("%s: write failed", self.sid, exc_info=True)
        elif self.queue is not None:
            await self.queue.put(pkt)
        else:
            if self.pending is None:
                self.pending = []
            self.pending.append(pkt)

    # receiving

    async def receive(self, pkt: packet.Packet) -> None:
        """Handle one packet from the client (engine.io's rules, without per-packet logging)."""
        kind = pkt.packet_type
        if kind == packet.MESSAGE:
            await self.server._trigger_event("message", self.sid, pkt.data,
                                             run_async=self.server.async_handlers)
        elif kind == packet.PONG:
            self.schedule_ping()
        elif kind == packet.UPGRADE:
            await self.send(packet.Packet(packet.NOOP))
        elif kind == packet.CLOSE:
            await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
        else:
            raise exceptions.UnknownPacketError()

    # receiving on a WebSocketStream (it calls these; there is no reader task)

    def on_message(self, data: str | bytes) -> None:
        inbox = self.inbox
        if inbox is None:
            if data == "3":  # PONG, most of what a quiet client sends: no task for it
                if not self.closed:
                    self.schedule_ping()
                return
            self.inbox = collections.deque((data,))
            self.server.run_soon(self._drain())
            return
        inbox.append(data)
        if len(inbox) >= INBOX_HIGH and self.held is None and isinstance(self.ws, WebSocketStream):
            self.held = self.ws  # a flood waits in the client's TCP buffer, not in our memory
            self.held.pause()

    async def _drain(self) -> None:
        """Handle the stream's messages in order, in one task, giving the loop back as it goes."""
        inbox = self.inbox
        assert inbox is not None
        try:
            handled = 0
            while inbox and not self.closed:
                data = inbox.popleft()
                if self.held is not None and len(inbox) <= INBOX_HIGH // 2:
                    self._release()
                if data == "3":
                    self.schedule_ping()
                elif not await self.take_data(data):
                    break
                handled += 1
                if handled % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        finally:
            self.inbox = None
            if self.held is not None:
                self._release()

    def _release(self) -> None:
        # The stream that was paused, even if the session has let go of it since (its close
        # reply must still be read).
        stream, self.held = self.held, None
        if stream is not None:
            stream.resume()

    def on_lost(self) -> None:
        if self.closed:
            self.leave()
        else:
            self.server.run_soon(self._transport_lost())

    async def _transport_lost(self) -> None:
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        self.leave()

    # heartbeat

    def schedule_ping(self) -> None:
        # As engine.io: a pong ends the current ping cycle; the next ping is due an interval later.
        if self.last_ping:
            self.last_ping = None
            self.server.heartbeats.due_in(self, self.server.ping_interval)

    # closing

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        if self.probing is not None:  # a session that ends takes its upgrade with it
            self.probing.fail()
        if self.queue is not None and self.ws is None:
            await super().close(wait=wait, abort=abort, reason=reason)  # long-polling
            if abort:
                # The client said CLOSE: answer its pending long-poll now, as Node's server does,
                # instead of leaving it hanging until the ping timeout. It polls no more.
                if self.queue is not None:
                    self.queue.put_nowait(packet.Packet(packet.NOOP))
                self.leave()
            elif self.server.sockets.get(self.sid) is self:
                # Our CLOSE waits in the queue for the client's next poll (handle_get_request
                # leaves then); a client that never polls again is dropped a ping timeout later.
                self.server.heartbeats.due_in(self, self.server.ping_timeout)
            return
        if not self.closed and not self.closing:
            self.closing = True
            await self.server._trigger_event(
                "disconnect", self.sid, reason or self.server.reason.SERVER_DISCONNECT,
                run_async=False)
            if not abort:
                await self.send(packet.Packet(packet.CLOSE))
            self.closed = True
        ws = self.ws
        if ws is not None and not ws.closed and asyncio.current_task() is not self.reader:
            # The reader is parked in receive(); closing the websocket wakes it up.
            self.server.close_websocket(ws, self.transport)
        self.leave()

    def leave(self) -> None:
        """A closed session leaves every structure of the engine at once (its heartbeat slot,
        the server's sessions) and lets go of its websocket and request: reference counting
        frees it when the request's task ends, with no collector pass."""
        server = self.server
        server.heartbeats.forget(self)
        if server.sockets.get(self.sid) is self:
            del server.sockets[self.sid]
        if self.reader is None:  # else the reader's detach() comes back here
            self.ws = None
            self.transport = None
        self.pending = None
        self._session = None

    async def handle_get_request(self, environ: Mapping[str, Any]) -> Any:
        self.polls += 1
        try:
            return await super().handle_get_request(environ)
        finally:
            self.polls -= 1
            if self.upgraded and self.ws is not None:
                self.queue = None  # the poll that was waiting when the session moved to its stream
            elif self.closed and self.queue is not None and self.queue.empty():
                self.leave()  # the poll that carried our CLOSE (or the last packets)

    # the websocket transport

    async def _upgrade_websocket(self, environ: Mapping[str, Any]) -> StreamResponse | dict[str, Any]:
        if self.upgraded:
            raise OSError("Socket has been upgraded already")
        if self.upgrading:
            return self.server._bad_request("Upgrade in progress")
        request = environ["aiohttp.request"]
        accept = None if self.server.websocket_compression else accept_key(request)
        if accept is None or request.transport is None or request.transport.is_closing():
            return await self.serve_websocket(environ)
        self.upgrading = True
        stream = WebSocketStream.take_over(request, accept, self.server.max_http_buffer_size)
        stream.receiver = self.probing = Upgrade(self, stream)
        return TakenOver()

    def switch_to(self, stream: WebSocketStream) -> None:
        """The upgrade is done: what was queued for polling goes out first, then sends write directly."""
        queue = self.queue
        assert queue is not None
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is not None and pkt.packet_type != packet.NOOP:  # a NOOP only ends a poll
                _write_now(stream, pkt)
        if self.polls:
            # A poll is still in flight (UPGRADE came in the same read as the probe, before the
            # poll took its NOOP): it gets one now, not at its timeout. engine.io's poll() goes on
            # using self.queue once it wakes, so the queue goes when that request is done.
            queue.put_nowait(packet.Packet(packet.NOOP))
        else:
            self.queue = None
        self.probing = None
        self.upgrading = False
        self.upgraded = True
        self.ws = stream
        self.transport = stream.transport
        stream.receiver = self

    async def serve_websocket(self, environ: Mapping[str, Any]) -> WebSocketResponse:
        """Run this session over a websocket in the request's task until either side closes it.

        (engine.io's way in: upgrades from polling. New websocket sessions are served by
        LeanEngineServer.serve_new_websocket, the same steps in one frame.)
        """
        ws = await self.prepare_websocket(environ["aiohttp.request"])
        if not await self.attach(ws):
            return ws
        try:
            while not self.closed and await self.take(await ws.receive()):
                pass
        finally:
            await self.detach(ws)
        return ws

    async def prepare_websocket(self, request: Request) -> WebSocketResponse:
        """The websocket handshake; a new session that fails it is closed."""
        server = self.server
        ws = WebSocketResponse(max_msg_size=server.max_http_buffer_size,
                               compress=server.websocket_compression,
                               timeout=CLOSE_GRACE_SECONDS, writer_limit=NEVER_WAIT_TO_DRAIN)
        try:
            await ws.prepare(request)
        except BaseException:
            if not self.connected:  # a failed upgrade leaves the polling session as it was
                await self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_ERROR)
            raise
        self.transport = request.transport
        return ws

    async def attach(self, ws: WebSocketResponse | WebSocketStream) -> bool:
        """Make `ws` this session's transport (after engine.io's upgrade dance if polling)."""
        if self.connected:
            if not await self._complete_upgrade(ws):
                return False
        else:
            self.connected = True
            self.upgraded = True
            pending, self.pending = self.pending or [], None
            while pending:
                await _write(ws, pending.pop(0))
        self.ws = ws
        if isinstance(ws, WebSocketStream):
            self.transport = ws.transport
            ws.receiver = self
        else:
            self.reader = asyncio.current_task()
        return True

    async def take(self, msg: WSMessage) -> bool:
        """Handle one websocket message; False when the session is over.

        Callers loop `while not s.closed and await s.take(await ws.receive())`: no message
        stays in a local of theirs, frames that last as long as the connection (and the
        first message carries the access token).
        """
        if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
            return False  # closed by the peer or by us, or a protocol error (e.g. too large)
        return await self.take_data(msg.data)

    async def take_data(self, data: str | bytes) -> bool:
        if len(data) > self.server.max_http_buffer_size:
            return False
        try:
            await self.receive(packet.Packet(encoded_packet=data))
        except exceptions.UnknownPacketError:
            pass
        except exceptions.SocketIsClosedError:
            return False
        except Exception:
            self.server.logger.exception("Unknown receive error")
        return True

    async def detach(self, ws: WebSocketResponse) -> None:
        """The websocket is done: close it, and the session with it."""
        self.reader = None
        await close_quickly(ws, self.transport)
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
        self.leave()
        forget_tracebacks(ws.exception())

    async def _complete_upgrade(self, ws: WebSocketResponse) -> bool:
        """engine.io's polling -> websocket upgrade: probe, then UPGRADE; False if it fails."""
        self.upgrading = True
        try:
            probe = await _receive_packet(ws)
            if probe is None or probe.packet_type != packet.PING or probe.data != "probe":
                return False
            await _write(ws, packet.Packet(packet.PONG, data="probe"))
            assert self.queue is not None
            await self.queue.put(packet.Packet(packet.NOOP))  # ends the pending poll
            upgrade = await _receive_packet(ws)
            if upgrade is None or upgrade.packet_type != packet.UPGRADE:
                self.upgraded = False
                return False
            # What was queued for polling goes out first; from here on sends write directly.
            while not self.queue.empty():
                pkt = self.queue.get_nowait()
                self.queue.task_done()
                if pkt is not None:
                    await _write(ws, pkt)
            self.queue = None
            self.upgraded = True
            return True
        finally:
            self.upgrading = False


class Upgrade:
    """engine.io's polling -> websocket upgrade on a WebSocketStream, a message at a time (the
    steps of LeanSocket._complete_upgrade): the probe answered and the pending poll ended, then
    UPGRADE switches the session over. Anything else, or no UPGRADE in time, ends the stream and
    leaves the session on polling."""

    __slots__ = ("session", "stream", "probed", "deadline")

    def __init__(self, session: LeanSocket, stream: WebSocketStream) -> None:
        self.session = session
        self.stream = stream
        self.probed = False
        self.deadline = asyncio.get_running_loop().call_later(UPGRADE_TIMEOUT_SECONDS, self.fail)

    def on_message(self, data: str | bytes) -> None:
        session = self.session
        if session.closed or session.closing or session.upgraded:
            self.fail()
        elif not self.probed:
            if data != "2probe":
                self.fail()
                return
            self.stream.send_str("3probe")
            session.queue.put_nowait(packet.Packet(packet.NOOP))  # ends the pending poll
            self.probed = True
        elif data != "5":
            self.fail()
        else:
            self.deadline.cancel()
            session.switch_to(self.stream)

    def on_lost(self) -> None:
        self._over()

    def fail(self) -> None:
        self._over()
        self.stream.receiver = None
        self.stream.end()

    def _over(self) -> None:
        self.deadline.cancel()
        if self.session.probing is self:
            self.session.probing = None
            self.session.upgrading = False


def _write_now(stream: WebSocketStream, pkt: packet.Packet) -> None:
    data = pkt.encode()
    if isinstance(data, str):
        stream.send_str(data)
    else:
        stream.send_bytes(data)


async def _write(ws: WebSocketResponse | WebSocketStream, pkt: packet.Packet) -> None:
    if isinstance(ws, WebSocketStream):  # writes at once, nothing to wait for
        _write_now(ws, pkt)
        return
    data = pkt.encode()
    if isinstance(data, str):
        await ws.send_str(data)
    else:
        await ws.send_bytes(data)


async def _receive_packet(ws: WebSocketResponse) -> packet.Packet | None:
    msg = await ws.receive()
    if msg.type is not WSMsgType.TEXT and msg.type is not WSMsgType.BINARY:
        return None
    return packet.Packet(encoded_packet=msg.data)


async def close_quickly(ws: WebSocketResponse | WebSocketStream, transport: asyncio.Transport | None) -> None:
    """Close a websocket; a peer that does not take the close frame loses the connection."""
    try:
        async with asyncio.timeout(CLOSE_GRACE_SECONDS * 2):
            await ws.close()
    except TimeoutError:  # still draining to a client that does not read
        if transport is not None:
            transport.abort()
    except Exception:
        log.debug("closing a websocket failed", exc_info=True)


def forget_tracebacks(exc: BaseException | None) -> None:
    """aiohttp keeps the error that ended a websocket (a peer gone mid-write) on the response,
    and its traceback holds the frames that hold the response: a cycle only a full collector
    pass would free, with the request, transport and session behind it."""
    seen = 0
    while exc is not None and seen < 8:
        exc.__traceback__ = None
        exc, seen = exc.__context__ or exc.__cause__, seen + 1


class Heartbeats:
    """Pings every session an interval after its last pong, and closes it if the next pong is late.

    One task and a slot per socket in a timing wheel (0.25 s slots, finer for short
    intervals), instead of a sleeping task per socket: a ping goes out up to a slot late,
    well inside the ping_interval + ping_timeout a client waits for one.
    """

    def __init__(self, server: LeanEngineServer) -> None:
        self.server = server
        self.tick = max(0.01, min(0.25, server.ping_interval / 10, server.ping_timeout / 10))
        # slot -> its sockets (a dict as an ordered set: a closed socket leaves in O(1))
        self.slots: dict[int, dict[LeanSocket, None]] = {}
        self.done = 0  # last slot handled
        self.task: asyncio.Task[None] | None = None

    def due_in(self, socket: LeanSocket, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if self.task is None:
            self.done = math.floor(loop.time() / self.tick)
            self.task = loop.create_task(self._run())
        slot = max(math.ceil((loop.time() + seconds) / self.tick), self.done + 1)
        self.forget(socket)
        socket.due = slot
        self.slots.setdefault(slot, {})[socket] = None

    def forget(self, socket: LeanSocket) -> None:
        sockets = self.slots.get(socket.due)
        if sockets is not None and sockets.pop(socket, False) is None and not sockets:
            del self.slots[socket.due]
        socket.due = 0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = math.floor(loop.time() / self.tick)
            for slot in range(self.done + 1, now + 1):
                self.done = slot  # what is scheduled from here on goes to a later slot
                # Handed over, not kept in a local: a sleeping wheel holds no closed session.
                await self._turn(slot, self.slots.pop(slot, None))
            await asyncio.sleep(max(0.0, (self.done + 1) * self.tick - loop.time()))

    async def _turn(self, slot: int, sockets: dict[LeanSocket, None] | None) -> None:
        for n, socket in enumerate(sockets or ()):
            if socket.due != slot:
                continue
            socket.due = 0
            if socket.closed:  # closed, and its last poll never came
                socket.leave()
            elif not socket.closing:
                try:
                    await self._beat(socket)
                except Exception:
                    log.exception("heartbeat of %s failed", socket.sid)
            if n % PINGS_PER_TURN == PINGS_PER_TURN - 1:
                await asyncio.sleep(0)

    async def _beat(self, socket: LeanSocket) -> None:
        server = self.server
        if socket.last_ping is None:
            socket.last_ping = time.time()
            self.due_in(socket, server.ping_timeout)
            await socket.send(packet.Packet(packet.PING))
            return
        log.info("%s: no pong within %.1fs, closing", socket.sid, server.ping_timeout)
        # abort=False sends CLOSE, which tells a half-open client it is disconnected.
        await socket.close(wait=False, abort=False, reason=server.reason.PING_TIMEOUT)
        socket.leave()  # a client that stopped answering will not poll for that CLOSE

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None


class LeanEngineServer(engineio.AsyncServer):
    """engine.io's AsyncServer making LeanSockets; deflate on websockets is a setting."""

    def __init__(self, *args: Any, websocket_compression: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "monitor_clients": False})
        # aiohttp accepts the permessage-deflate browsers offer unless told not to, and each
        # such socket then keeps its own zlib state (~95 KB): small event frames gain nothing.
        self.websocket_compression = websocket_compression
        self._async = {**self._async, "translate_request": RequestEnviron}  # this server's copy
        self.heartbeats = Heartbeats(self)
        self.closing_websockets: set[asyncio.Task[None]] = set()
        self.receiving: set[asyncio.Task[Any]] = set()

    def run_soon(self, work: Awaitable[Any]) -> None:
        """A websocket stream's message or loss, handled in a task of its own (kept until done)."""
        task = asyncio.ensure_future(work)
        self.receiving.add(task)
        task.add_done_callback(self.receiving.discard)

    def close_websocket(self, ws: WebSocketResponse | WebSocketStream, transport: asyncio.Transport | None) -> None:
        task = asyncio.get_running_loop().create_task(close_quickly(ws, transport))
        self.closing_websockets.add(task)
        task.add_done_callback(self.closing_websockets.discard)

    def websocket_entry(self, request: Request) -> Awaitable[StreamResponse]:
        """Where the app sends /socket.io websocket upgrades, ahead of its middlewares.

        Not `async`: it hands back the coroutine that serves the request, so no frame of
        its own lasts as long as the connection. engine.io's path to a websocket session
        is five coroutines deep, each keeping its locals (the parsed query, the environ);
        a new session is served here in one.
        """
        if self._opens_websocket(request):
            return self.serve_new_websocket(request)
        return self.handle_request(request)

    async def serve_new_websocket(self, request: Request) -> StreamResponse:
        accept = None if self.websocket_compression else accept_key(request)
        if accept is not None:
            return await self.serve_websocket_stream(request, accept)
        environ = RequestEnviron(request)
        s = await self._start_session(environ, "websocket")
        if not isinstance(s, LeanSocket):
            return await self._make_response(s, environ)
        try:
            ws = await s.prepare_websocket(request)
            await s.attach(ws)
            try:
                while not s.closed and await s.take(await ws.receive()):
                    pass
            finally:
                await s.detach(ws)
            return ws
        finally:
            self._forget(s)

    async def serve_websocket_stream(self, request: Request, accept: str) -> StreamResponse:
        """A new session on a WebSocketStream: once it is open, aiohttp's request, handler and
        tasks are gone, and the session lives on its transport alone (no task of its own)."""
        environ = environ_snapshot(request)
        s = await self._start_session(environ, "websocket")
        if not isinstance(s, LeanSocket):
            return await self._make_response(s, environ)
        transport = request.transport
        if transport is None or transport.is_closing():  # the client left while it was admitted
            await s.close(wait=False, abort=True, reason=self.reason.TRANSPORT_ERROR)
            s.leave()
            return TakenOver()
        await s.attach(WebSocketStream.take_over(request, accept, self.max_http_buffer_size))
        return TakenOver()

    def _forget(self, s: LeanSocket) -> None:
        if s.closed:
            s.leave()

    def _opens_websocket(self, request: Request) -> bool:
        """A valid request for a new websocket session; anything else goes engine.io's way."""
        if request.method != "GET" or request.headers.get("Upgrade", "").lower() != "websocket":
            return False
        query = urllib.parse.parse_qs(request.query_string)
        if "sid" in query or "j" in query or query.get("EIO") != ["4"] \
                or query.get("transport", [""])[0] != "websocket" or "websocket" not in self.transports:
            return False
        origin = request.headers.get("Origin")
        if origin and self.cors_allowed_origins != []:
            allowed = self._cors_allowed_origins(RequestEnviron(request))
            if allowed is not None and origin not in allowed:
                return False
        return True

    async def _start_session(self, environ: Mapping[str, Any], transport: str) -> LeanSocket | dict[str, Any]:
        """engine.io's connect up to the transport: the session, its OPEN packet, the app's verdict."""
        sid = self.generate_id()
        s = LeanSocket(self, sid, polling=transport != "websocket")
        self.sockets[sid] = s
        await s.send(packet.Packet(packet.OPEN, {  # queued, or held until the websocket is open
            "sid": sid,
            "upgrades": self._upgrades(sid, transport),
            "pingTimeout": int(self.ping_timeout * 1000),
            "pingInterval": int(self.ping_interval + self.ping_interval_grace_period) * 1000,
            "maxPayload": self.max_http_buffer_size,
        }))
        if isinstance(environ, RequestEnviron):  # python-socketio keeps it as long as the session
            environ = environ_snapshot(environ.request)
        ret = await self._trigger_event("connect", sid, environ, run_async=False)
        if ret is not None and ret is not True:
            del self.sockets[sid]
            self.logger.warning("Application rejected connection")
            return self._unauthorized(ret or None)
        s.schedule_ping()
        return s

    async def _handle_connect(self, environ: Mapping[str, Any], transport: str,
                              jsonp_index: int | None = None) -> Any:
        """engine.io's connect for long-polling (and websockets that came engine.io's way)."""
        s = await self._start_session(environ, transport)
        if not isinstance(s, LeanSocket):
            return s
        if transport == "websocket":
            try:
                return await s.serve_websocket(environ)
            finally:
                self._forget(s)
        s.connected = True
        headers = None
        if self.cookie:
            cookie = self.cookie if isinstance(self.cookie, dict) else {
                "name": self.cookie, "path": "/", "SameSite": "Lax"}
            headers = [("Set-Cookie", self._generate_sid_cookie(s.sid, cookie))]
        try:
            return self._ok(await s.poll(), headers=headers, jsonp_index=jsonp_index)
        except exceptions.QueueEmpty:
            return self._bad_request()

    async def shutdown(self) -> None:
        await self.heartbeats.stop()
        await super().shutdown()
