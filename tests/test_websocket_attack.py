"""Attacks on the hand-made websocket (server/realtime/websocket.py) and the Engine.IO sessions on
it (server/realtime/engine.py): hostile frames, clients that do not read, pipelined upgrades,
races with a session's close, and shutdown. An attacker's probe wrote each failing against the
stream's first version; they now keep its fixes."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from server.realtime import engine, websocket
from server.realtime.server import hub_of
from server.realtime.websocket import WebSocketStream
from tests.test_realtime_transport import app_with, eventually
from tests.test_websocket_stream import (
    CLOSE,
    PING,
    PONG,
    TEXT,
    frame,
    join,
    peer,
    polling_session,
    upgrade,
    upgrade_request,
)

CONTINUATION = 0x0


@pytest.fixture
async def server(settings):
    async with app_with(settings) as (app, api):
        yield app, api


def the_stream(app: Any) -> WebSocketStream:
    (session,) = hub_of(app.app).sio.eio.sockets.values()
    assert isinstance(session.ws, WebSocketStream)
    return session.ws


def streams_made(monkeypatch: pytest.MonkeyPatch) -> list[WebSocketStream]:
    """Every WebSocketStream the server takes over from now on (upgrades' too)."""
    made: list[WebSocketStream] = []
    take_over = WebSocketStream.take_over.__func__  # type: ignore[attr-defined]

    def recording(cls: type[WebSocketStream], *args: Any) -> WebSocketStream:
        stream = take_over(cls, *args)
        made.append(stream)
        return stream

    monkeypatch.setattr(WebSocketStream, "take_over", classmethod(recording))
    return made


def slow_disconnects(hub: Any, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The hub's disconnect handler waits for the returned event (as one awaiting Redis or the database)."""
    release = asyncio.Event()
    handlers = hub.sio.handlers["/"]
    on_disconnect = handlers["disconnect"]

    async def slow_disconnect(*args: Any) -> Any:
        await release.wait()
        return await on_disconnect(*args)

    monkeypatch.setitem(handlers, "disconnect", slow_disconnect)
    return release


async def flood_pings_without_reading(p: Any, megabytes: int) -> None:
    """Pings, as fast as the server takes them, from a client that never reads the pongs."""
    chunk = frame(PING, b"x" * 125) * 8000  # ~1 MB
    try:
        async with asyncio.timeout(4):
            for _ in range(megabytes):
                p.send(chunk)
                await p.writer.drain()
    except TimeoutError:
        pass  # the server stopped reading: the flood backed up into TCP (the right outcome)
    except ConnectionResetError:
        pass  # or it dropped the connection


# --- frames -----------------------------------------------------------------------------------

async def test_empty_continuation_frames_do_not_pile_up_without_limit(server) -> None:
    """A message comes in at most MAX_FRAGMENTS pieces: an empty piece is six bytes on the wire
    and a list entry on the server."""
    app, _ = server
    async with peer(app) as p:
        p.send(frame(TEXT, "4", fin=False))
        chunk = frame(CONTINUATION, b"", fin=False) * 100_000
        try:
            for _ in range(20):  # 2 million pieces, 12 MB
                p.send(chunk)
                await p.writer.drain()
        except ConnectionResetError:  # closed (1009) while the rest was on its way: refused
            await eventually(lambda: not hub_of(app.app).sio.eio.sockets)
            return
        p.send(frame(PING, b"sync"))  # control frames may come between the pieces
        kind, payload = await p.read_frame()
        if kind == PONG:  # the server read every piece and is still collecting them
            fragments = the_stream(app).fragments
            pytest.fail(f"{len(fragments or ())} empty fragments held for one message")
        assert kind == CLOSE and struct.unpack("!H", payload[:2])[0] in (1002, 1009)


@pytest.mark.parametrize(("payload", "code"), [
    (b"\x03", 1002),  # a close payload of one byte (RFC 6455 5.5.1: none, or a code first)
    (struct.pack("!H", 1000) + b"\xff\xfe", 1007),  # a reason that is not UTF-8 (7.1.6, 8.1)
    (struct.pack("!H", 2000), 1002),  # a code RFC 6455 reserves (7.4.2)
    (struct.pack("!H", 1016), 1002),
])
async def test_a_malformed_close_frame_is_a_protocol_error(server, payload, code) -> None:
    app, _ = server
    async with peer(app) as p:
        p.send(frame(CLOSE, payload))
        assert await p.closed_with() == code


# --- clients that do not read -----------------------------------------------------------------

async def test_pongs_to_a_client_that_never_reads_do_not_pile_up_on_the_server(server) -> None:
    """A client that sends pings and never reads: once our writes back up the server stops
    reading it, so its pongs cannot pile up (nor its blind pongs keep it past the heartbeat)."""
    app, _ = server
    limit = 8 * 2**20
    async with peer(app) as p:
        stream = the_stream(app)
        await flood_pings_without_reading(p, 48)

        def buffered() -> int:
            transport = stream.transport
            return 0 if transport is None else transport.get_write_buffer_size()

        # The flood stopped because the server stopped reading (not because it ran out): what
        # it buffered stays as it is, and the rest waits in TCP on the client's side.
        await eventually(lambda: stream.paused > 0)
        assert buffered() <= limit, f"{buffered() / 2**20:.0f} MB of pongs buffered for one client"


async def test_an_abandoned_upgrade_with_unsent_data_is_dropped_not_kept_forever(server, monkeypatch) -> None:
    """A probe websocket that never reads and never says UPGRADE: its pongs back up, the server
    stops reading it, the upgrade's deadline ends it, and a close that cannot drain is aborted."""
    monkeypatch.setattr(engine, "UPGRADE_TIMEOUT_SECONDS", 1.0)
    app, api = server
    made = streams_made(monkeypatch)
    user = await api.register()
    async with polling_session(app, user.access_token) as (_, sid):
        p = await upgrade(app, sid)
        try:
            (stream,) = made
            await flood_pings_without_reading(p, 4)
            assert stream.transport is None or stream.transport.get_write_buffer_size() < 2**20
            await eventually(lambda: stream.transport is None,
                             timeout=engine.UPGRADE_TIMEOUT_SECONDS + websocket.ABORT_AFTER_SECONDS + 3)
            assert not hub_of(app.app).sio.eio.sockets[sid].upgrading  # still a polling session
        finally:
            p.writer.transport.abort()


# --- upgrades ---------------------------------------------------------------------------------

async def test_a_probe_and_upgrade_sent_together_still_end_the_pending_poll(server) -> None:
    """UPGRADE in the same read as the probe: the pending long-poll still gets the probe's NOOP
    at once, not at its timeout (which would close the upgraded session)."""
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    async with polling_session(app, user.access_token) as (http, sid):
        base = f"http://127.0.0.1:{app.port}/socket.io/?EIO=4&transport=polling&sid={sid}"
        session = hub.sio.eio.sockets[sid]

        async def poll() -> str:
            async with http.get(base) as response:
                return await response.text()

        pending = asyncio.create_task(poll())
        await eventually(lambda: bool(session.queue._getters))  # the poll waits on the queue
        p = await upgrade(app, sid)
        try:
            p.send(frame(TEXT, "2probe") + frame(TEXT, "5"))
            assert await p.read_text() == "3probe"
            await eventually(lambda: session.upgraded)
            try:
                assert await asyncio.wait_for(pending, 5) == "6"
            except TimeoutError:
                pytest.fail("the pending poll was never answered")
        finally:
            pending.cancel()
            p.writer.transport.abort()


async def test_a_session_closed_by_the_server_while_its_upgrade_completes_closes_the_websocket(
        server, monkeypatch) -> None:
    """The server closes a polling session (revocation, shutdown, ping timeout) while its
    disconnect handler awaits and UPGRADE arrives: the upgrade ends with the session, and so
    does its websocket."""
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    release = slow_disconnects(hub, monkeypatch)
    async with polling_session(app, user.access_token) as (http, sid):
        session = hub.sio.eio.sockets[sid]
        p = await upgrade(app, sid)
        try:
            p.send(frame(TEXT, "2probe"))
            assert await p.read_text() == "3probe"
            closing = asyncio.create_task(session.close(wait=False))  # as _close_transports does
            await eventually(lambda: session.closing)
            p.send(frame(TEXT, "5"))
            await eventually(lambda: session.ws is not None or not session.upgrading)
            release.set()
            await asyncio.wait_for(closing, 5)
            stream = session.ws
            try:
                assert await p.closed_with() in (1000, 1001)
            except TimeoutError:
                pytest.fail(f"the websocket stays open: session closed={session.closed}, on the stream "
                            f"{stream is not None}, close frame sent={stream is not None and stream.close_sent}")
        finally:
            p.writer.transport.abort()
        # Still a polling session, closed: its next poll (CLOSE, or engine.io's 400 for a closed
        # session) takes it out of the engine's sessions.
        async with http.get(f"http://127.0.0.1:{app.port}/socket.io/?EIO=4&transport=polling&sid={sid}"):
            pass
    await eventually(lambda: sid not in hub.sio.eio.sockets)


async def test_a_client_close_while_its_upgrade_completes_ends_session_and_websocket(
        server, monkeypatch, caplog) -> None:
    """The same race from the client's side (CLOSE by POST while the disconnect handler awaits,
    UPGRADE by websocket): the session and the websocket both end, and nothing fails."""
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    release = slow_disconnects(hub, monkeypatch)
    async with polling_session(app, user.access_token) as (http, sid):
        session = hub.sio.eio.sockets[sid]
        base = f"http://127.0.0.1:{app.port}/socket.io/?EIO=4&transport=polling&sid={sid}"
        p = await upgrade(app, sid)
        try:
            p.send(frame(TEXT, "2probe"))
            assert await p.read_text() == "3probe"

            async def post_close() -> int:
                async with http.post(base, data="1") as response:
                    return response.status

            posted = asyncio.create_task(post_close())
            await eventually(lambda: session.closing)
            p.send(frame(TEXT, "5"))
            await eventually(lambda: session.ws is not None or not session.upgrading)
            release.set()
            assert await asyncio.wait_for(posted, 5) == 200
            errors = [r.getMessage() for r in caplog.records if r.exc_info]
            assert not errors, errors
            try:
                await p.closed_with()
            except TimeoutError:
                pytest.fail("the websocket of the closed session stays open")
        finally:
            p.writer.transport.abort()
    await eventually(lambda: sid not in hub.sio.eio.sockets)


# --- shutdown ---------------------------------------------------------------------------------

async def test_shutdown_closes_websockets_still_upgrading(settings) -> None:
    """Shutdown ends a polling session's upgrade stream with the session, not at its 10 s deadline
    (the stream is no longer one of aiohttp's connections)."""
    async with app_with(settings) as (app, api):
        user = await api.register()
        async with polling_session(app, user.access_token) as (_, sid):
            p = await upgrade(app, sid)
            p.send(frame(TEXT, "2probe"))
            assert await p.read_text() == "3probe"
            await asyncio.wait_for(app.close(), 10)
            try:
                async with asyncio.timeout(engine.CLOSE_GRACE_SECONDS * 2 + 1):
                    while await p.reader.read(65536):
                        pass
            except TimeoutError:
                pytest.fail("the upgrading websocket is still open after the app shut down")
            finally:
                p.writer.transport.abort()


# --- sessions and their messages -----------------------------------------------------------

async def test_a_socket_dropped_while_its_connect_is_admitted_leaves_no_connection(server, monkeypatch) -> None:
    """A socket that drops while its connect is admitted leaves no connection, feed or room
    entry behind (its disconnect ran before the admission came back)."""
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    entered, release = asyncio.Event(), asyncio.Event()
    admit = hub.admissions.admit

    async def slow_admit(*args: Any) -> Any:
        entered.set()
        await release.wait()
        return await admit(*args)

    monkeypatch.setattr(hub.admissions, "admit", slow_admit)
    async with peer(app) as p:
        p.send(frame(TEXT, join(user.access_token)))
        await asyncio.wait_for(entered.wait(), 5)
        p.writer.transport.abort()
        await eventually(lambda: not hub.sio.eio.sockets)
    release.set()
    await eventually(lambda: not hub.sio.eio.receiving)
    assert not hub.connections, hub.connections
    assert not hub.manager.rooms.get("/"), hub.manager.rooms


async def test_a_message_flood_before_connect_is_not_a_task_each(server, monkeypatch) -> None:
    """A flood of messages is one task per socket draining them, with reading paused while a
    backlog waits: not a task per message (one 64 KB read of tiny ones was ~9,000)."""
    app, _ = server
    eio = hub_of(app.app).sio.eio
    peak = 0
    run_soon = eio.run_soon

    def counting(work: Any) -> None:
        nonlocal peak
        run_soon(work)
        peak = max(peak, len(eio.receiving))

    monkeypatch.setattr(eio, "run_soon", counting)
    lag = 0.0

    async def watch() -> None:
        nonlocal lag
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            lag = max(lag, loop.time() - before - 0.01)

    watcher = asyncio.create_task(watch())
    async with peer(app) as p:
        chunk = frame(TEXT, "6") * 50_000  # engine.io NOOPs, 7 bytes each
        for _ in range(4):
            p.send(chunk)
            await p.writer.drain()
        p.send(frame(PING, b"sync"))
        assert await asyncio.wait_for(p.reader.readexactly(6), 60) == bytes((0x80 | PONG, 4)) + b"sync"
        await eventually(lambda: not eio.receiving, timeout=60)
    watcher.cancel()
    assert peak <= 1000, f"{peak} tasks waiting at once for one socket's messages (loop stalled up to {lag:.2f} s)"


# --- what held up (kept as regression tests) ---------------------------------------------------

async def test_a_connect_split_at_every_byte_is_read(server) -> None:
    app, api = server
    user = await api.register()
    async with peer(app) as p:
        data = frame(PING, b"a") + frame(TEXT, join(user.access_token)) + frame(PING, b"b")
        for n in range(len(data)):
            p.send(data[n:n + 1])
            await p.writer.drain()
        got = [await p.read_frame() for _ in range(3)]  # the CONNECT reply waits for admission
        assert got[0] == (PONG, b"a") and (PONG, b"b") in got
        assert any(kind == TEXT and payload.startswith(b"40{") for kind, payload in got)


async def test_a_second_http_request_pipelined_behind_the_upgrade_is_a_protocol_error(server) -> None:
    app, _ = server
    hub = hub_of(app.app)
    async with peer(app, b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n") as p:
        assert await p.closed_with() == 1002
    await eventually(lambda: not hub.sio.eio.sockets)


async def test_data_after_the_close_frame_is_ignored(server) -> None:
    app, _ = server
    hub = hub_of(app.app)
    async with peer(app) as p:
        p.send(frame(CLOSE, struct.pack("!H", 1000)) + frame(PING, b"late") + b"\xff" * 100)
        assert await p.closed_with() == 1000
    await eventually(lambda: not hub.sio.eio.sockets)


async def test_a_connection_dropped_while_its_session_is_admitted_leaves_nothing(server, monkeypatch, caplog) -> None:
    app, _ = server
    hub = hub_of(app.app)
    eio = hub.sio.eio
    entered, release = asyncio.Event(), asyncio.Event()
    on_connect = eio.handlers["connect"]

    async def slow_connect(*args: Any) -> Any:
        entered.set()
        await release.wait()
        return await on_connect(*args)

    monkeypatch.setitem(eio.handlers, "connect", slow_connect)
    connections = len(app.runner.server._connections)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(upgrade_request() + frame(TEXT, "40"))
    await asyncio.wait_for(entered.wait(), 5)
    writer.transport.abort()
    await eventually(lambda: len(app.runner.server._connections) == connections)
    release.set()
    await eventually(lambda: not eio.sockets and not hub.connections and not eio.receiving)
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_shutdown_with_a_client_that_does_not_read_finishes_quickly(settings) -> None:
    async with app_with(settings) as (app, _):
        async with peer(app) as p:
            await flood_pings_without_reading(p, 8)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.wait_for(app.close(), 10)
            assert loop.time() - started < engine.CLOSE_GRACE_SECONDS * 2 + 1.5
            p.writer.transport.abort()


async def test_a_second_upgrade_for_one_session_is_refused(server) -> None:
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    async with polling_session(app, user.access_token) as (_, sid):
        first = await upgrade(app, sid)
        try:
            for _ in range(2):  # while the first is upgrading, then once it is done
                reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
                writer.write(upgrade_request().replace(b"transport=websocket",
                                                       f"transport=websocket&sid={sid}".encode()))
                head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
                assert head.startswith("HTTP/1.1 400"), head
                writer.close()
                if hub.sio.eio.sockets[sid].upgraded:
                    break
                first.send(frame(TEXT, "2probe"))
                assert await first.read_text() == "3probe"
                first.send(frame(TEXT, "5"))
                await eventually(lambda: hub.sio.eio.sockets[sid].upgraded)
            else:
                pytest.fail("the second round did not run")
        finally:
            first.writer.transport.abort()
    await eventually(lambda: not hub.sio.eio.sockets and not hub.connections)
