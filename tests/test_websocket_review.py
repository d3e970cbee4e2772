"""A second attacker's probe of the WebSocketStream fixes (flow control, the inbox, the upgrade's
queue): each test here failed against commit c561736, except the last (what held up); they now
keep the fixes."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

from server.realtime import engine
from server.realtime.server import hub_of
from server.realtime.websocket import WebSocketStream
from tests.test_realtime import connected, url_of
from tests.test_realtime_transport import app_with, eventually
from tests.test_websocket_stream import (
    CLOSE,
    TEXT,
    frame,
    join,
    peer,
    polling_session,
    upgrade,
)


@pytest.fixture
async def server(settings):
    async with app_with(settings) as (app, api):
        yield app, api


def the_session(app: Any) -> engine.LeanSocket:
    (session,) = hub_of(app.app).sio.eio.sockets.values()
    return session


def blocking_take_data(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Sessions' messages wait for `release` (a handler that awaits the database): the inbox fills."""
    entered, release = asyncio.Event(), asyncio.Event()
    take_data = engine.LeanSocket.take_data

    async def slow(self: engine.LeanSocket, data: str | bytes) -> bool:
        entered.set()
        await release.wait()
        return await take_data(self, data)

    monkeypatch.setattr(engine.LeanSocket, "take_data", slow)
    return entered, release


def loop_errors() -> list[dict[str, Any]]:
    """What reaches the loop's exception handler from now on (callbacks that raised)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    return errors


# --- the upgrade's polling queue ----------------------------------------------------------------

async def test_an_upgrade_with_no_poll_pending_lets_go_of_the_polling_queue(server) -> None:
    """The probe's NOOP is put in the queue when no poll waits (the client was between polls) and
    UPGRADE comes a read later: the session lets go of the polling queue once on its stream."""
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    async with polling_session(app, user.access_token) as (_, sid):
        session = hub.sio.eio.sockets[sid]
        assert not session.queue._getters  # no poll pending
        p = await upgrade(app, sid)
        try:
            p.send(frame(TEXT, "2probe"))
            assert await p.read_text() == "3probe"
            p.send(frame(TEXT, "5"))  # its own read, after the probe's answer
            await eventually(lambda: session.upgraded and isinstance(session.ws, WebSocketStream))
            p.send(frame(TEXT, '421["ping"]'))
            assert (await p.read_text()).startswith("431[{")  # the session works on its stream
            queue = session.queue
            assert queue is None, f"the polling queue stays for the session's life ({queue.qsize()} packets in it)"
        finally:
            p.writer.transport.abort()


async def test_a_real_client_upgrading_from_polling_keeps_no_polling_queue(server, sockets) -> None:
    """python-socketio's client, polling then websocket: once upgraded, no polling queue is left."""
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    client = await connected(sockets, url_of(app), user, transports=("polling", "websocket"))
    await eventually(lambda: client.sio.transport() == "websocket")
    session = the_session(app)
    await eventually(lambda: isinstance(session.ws, WebSocketStream))
    assert (await client.call("ping"))["ok"] is True
    try:
        await eventually(lambda: session.queue is None, timeout=2)
    except AssertionError:
        pytest.fail(f"upgraded session still holds its polling queue: {session.queue.qsize()} packets, "
                    f"{len(session.queue._getters)} getters")
    assert hub.sio.eio.sockets


# --- the inbox's pause ----------------------------------------------------------------------------

async def test_a_session_closed_while_its_inbox_holds_the_stream_still_reads_the_close_reply(
        server, monkeypatch) -> None:
    """A flood fills the inbox (reading paused), then the server closes the session (revocation,
    shutdown): the drain resumes the stream it paused, though the session has let go of it, so the
    peer's answer to our close frame is read and the connection closes at once (not aborted 2 s later)."""
    app, api = server
    entered, release = blocking_take_data(monkeypatch)
    async with peer(app) as p:
        session = the_session(app)
        stream = session.ws
        assert isinstance(stream, WebSocketStream)
        p.send(frame(TEXT, "4x") * (engine.INBOX_HIGH + 20))
        await asyncio.wait_for(entered.wait(), 5)
        await eventually(lambda: session.held)
        await session.close(wait=False)  # the server ends the session, its drain still busy
        release.set()
        await eventually(lambda: session.inbox is None)
        kind, payload = await p.read_frame()
        while kind == TEXT:
            kind, payload = await p.read_frame()
        assert kind == CLOSE
        p.send(frame(CLOSE, payload[:2]))  # the answer RFC 6455 asks for
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            rest = await asyncio.wait_for(p.reader.read(), 5)
        except ConnectionResetError:
            rest = None
        waited = loop.time() - started
        assert rest == b"" and waited < 1.0, (
            f"closed after {waited:.1f} s ({'reset' if rest is None else 'EOF'}); stream paused={stream.paused}")


async def test_a_close_frame_read_when_writes_drain_closes_the_transport_once(server, monkeypatch) -> None:
    """The peer's CLOSE waits in the stream's buffer while reading is paused (inbox full, then our
    writes back up). When the writes drain, resume_writing() runs inside asyncio's _write_ready: the
    buffered CLOSE is parsed on a later turn, so the transport is closed once and nothing is logged."""
    app, api = server
    errors = loop_errors()
    entered, release = blocking_take_data(monkeypatch)
    async with peer(app) as p:
        session = the_session(app)
        stream = session.ws
        assert isinstance(stream, WebSocketStream)
        p.send(frame(TEXT, "4x") * (engine.INBOX_HIGH + 20) + frame(CLOSE, struct.pack("!H", 1000)))
        await asyncio.wait_for(entered.wait(), 5)
        await eventually(lambda: session.held and stream.buffer is not None)
        # Our writes back up: the client reads nothing for now (events for it, a burst).
        big = "4" + "x" * 2**20
        while stream.transport is not None and stream.transport.get_write_buffer_size() < 2**20:
            stream.send_str(big)
        assert stream.paused == 2
        release.set()
        await eventually(lambda: stream.paused == 1)  # the inbox let go; our writes still hold it
        try:
            async with asyncio.timeout(10):
                while await p.reader.read(2**20):  # the client reads it all
                    pass
        except ConnectionResetError:
            pass
        await eventually(lambda: stream.transport is None)
        await asyncio.sleep(0)  # (the callback scheduled by close() runs)
        await eventually(lambda: not hub_of(app.app).sio.eio.sockets)
    asyncio.get_running_loop().set_exception_handler(None)
    assert not errors, [str(e.get("exception") or e.get("message")) for e in errors]


# --- what held up (kept as a regression test) ---------------------------------------------------

async def test_a_client_slow_for_a_while_that_catches_up_stays_connected(settings) -> None:
    """A burst of events backs our writes up (reading pauses with them); the client reads nothing
    for a while, then catches up and answers the ping that came behind the burst in time."""
    async with app_with(settings, socketio_ping_interval_seconds=1, socketio_ping_timeout_seconds=3) as (app, api):
        hub = hub_of(app.app)
        user = await api.register()
        async with peer(app) as p:
            p.send(frame(TEXT, join(user.access_token)))
            assert (await p.read_text()).startswith("40{")
            session = the_session(app)
            stream = session.ws
            (sid,) = hub.connections
            for n in range(200):  # ~6 MB: past what the kernel takes for a client not reading
                await hub.sio.emit("activity.posted", {"n": n, "pad": "x" * 30_000}, to=sid)
            assert stream.paused  # our writes backed up
            await asyncio.sleep(0.5)  # the client is busy for half a second (no condition to wait on)
            seen, pongs = [], 0
            async with asyncio.timeout(8):
                while len(seen) < 200 or pongs < 3:  # three ping cycles after it caught up
                    text = await p.read_text()
                    if text == "2":
                        p.send(frame(TEXT, "3"))
                        pongs += 1
                    elif text.startswith("42"):
                        seen.append(text)
                    else:
                        pytest.fail(f"unexpected {text[:40]!r} after {len(seen)} events and {pongs} pongs")
            assert [s.split('"n":', 1)[1].split(",", 1)[0] for s in seen] == [str(n) for n in range(200)]
            assert sid in hub.connections
