"""Sessions that end leave every structure at once and are freed by reference counting alone
(no collector pass), whichever way they end; and the app puts the GC settings back."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from server.realtime.engine import LeanSocket
from server.realtime.server import SocketHub, hub_of
from tests.conftest import start_app
from tests.test_realtime import url_of
from tests.test_realtime_transport import (
    FAST_PINGS,
    _client_frame,
    _stalled_client,
    app_with,
    eventually,
)


@contextmanager
def collector_off() -> Iterator[None]:
    """No automatic collector pass: whatever is freed meanwhile was freed by reference counting."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def holders(obj: Any) -> str:
    """What still refers to `obj` (for the failure message)."""
    here = sys._getframe()
    found = []
    for r in gc.get_referrers(obj):
        if r is here or r is here.f_back:
            continue
        name = type(r).__name__
        if name == "frame":
            name += f" {r.f_code.co_qualname}:{r.f_lineno}"
        elif name == "dict":
            name += f" {list(r)[:5]}"
        elif name == "cell":
            name += " <- " + ", ".join(
                getattr(c, "__qualname__", type(c).__name__) for c in gc.get_referrers(r))
        found.append(name)
    return "; ".join(found)


def left_behind(realtime: SocketHub) -> list[str]:
    """The per-connection structures that still hold something (none, once every session ended)."""
    sio, manager = realtime.sio, realtime.manager
    structures = {
        "connections": realtime.connections, "engine sessions": sio.eio.sockets,
        "heartbeat slots": sio.eio.heartbeats.slots, "environs": sio.environ,
        "join deadlines": sio._join_deadlines, "replay gates": manager.gates,
        "joined rooms": manager.joined, "feeds": realtime.feeds.feeds,
        "rooms": {room: sids for room, sids in manager.rooms.get("/", {}).items() if sids},
    }
    return [name for name, held in structures.items() if held]


def every_structure_empty(realtime: SocketHub) -> bool:
    return not left_behind(realtime)


async def connected_session(realtime: SocketHub) -> LeanSocket:
    await eventually(lambda: len(realtime.connections) == 1 and len(realtime.sio.eio.sockets) == 1)
    [session] = realtime.sio.eio.sockets.values()
    assert isinstance(session, LeanSocket)
    return session


async def all_left(realtime: SocketHub, timeout: float = 8) -> None:
    try:
        await eventually(lambda: every_structure_empty(realtime), timeout=timeout)
    except AssertionError:
        raise AssertionError(f"left behind: {left_behind(realtime)}") from None


async def assert_freed_without_gc(realtime: SocketHub, refs: list[weakref.ref]) -> None:
    await all_left(realtime)
    try:
        await eventually(lambda: all(ref() is None for ref in refs), timeout=3)
    except AssertionError:
        alive = []
        for ref in refs:
            obj = ref()
            if obj is not None:
                alive.append((type(obj).__name__, holders(obj)))
            del obj
        raise AssertionError(f"still alive with the collector off: {alive}") from None


async def _raw_websocket(port: int, token: str) -> tuple[socket.socket, asyncio.StreamReader,
                                                          asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: test\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.write(_client_frame("40" + orjson.dumps({"token": token}).decode()))
    for _ in range(2):  # OPEN, then the CONNECT reply
        _, length = await reader.readexactly(2)
        await reader.readexactly(length)
    return sock, reader, writer


# Each way of leaving: (connect, leave) -> the test checks the session is gone and freed.

async def websocket_closed_by_client(server, user, sockets) -> Callable[[], Awaitable[None]]:
    client = sockets()
    await client.connect(url_of(server), token=user.access_token, transports=("websocket",))
    return client.sio.disconnect


async def polling_closed_by_client(server, user, sockets) -> Callable[[], Awaitable[None]]:
    client = sockets()
    await client.connect(url_of(server), token=user.access_token, transports=("polling",))
    return client.sio.disconnect


async def upgraded_then_closed(server, user, sockets) -> Callable[[], Awaitable[None]]:
    client = sockets()
    await client.connect(url_of(server), token=user.access_token, transports=("polling", "websocket"))
    await eventually(lambda: client.sio.transport() == "websocket")
    return client.sio.disconnect


async def websocket_tcp_dropped(server, user, sockets) -> Callable[[], Awaitable[None]]:
    sock, _, writer = await _raw_websocket(server.port, user.access_token)

    async def drop() -> None:
        # RST, no close frame: as a phone losing its network, or a killed tab's process.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return drop


async def polling_client_gone(server, user, sockets) -> Callable[[], Awaitable[None]]:
    http = aiohttp.ClientSession()
    base = url_of(server) + "/socket.io/?EIO=4&transport=polling"
    async with http.get(base) as reply:
        sid = orjson.loads((await reply.text())[1:])["sid"]
    async with http.post(f"{base}&sid={sid}",
                         data="40" + orjson.dumps({"token": user.access_token}).decode()) as reply:
        assert reply.status == 200
    async with http.get(f"{base}&sid={sid}") as reply:
        assert (await reply.text()).startswith("40")
    return http.close  # and it never polls again: the ping goes unanswered


async def websocket_client_frozen(server, user, sockets) -> Callable[[], Awaitable[None]]:
    _, writer = await _stalled_client(server, user.access_token)

    async def freeze() -> None:
        pass  # it already stopped reading; its pings go unanswered

    async def close_later() -> None:
        writer.close()

    frozen.append(close_later)
    return freeze


frozen: list[Callable[[], Awaitable[None]]] = []


@pytest.mark.parametrize("way", [websocket_closed_by_client, polling_closed_by_client, upgraded_then_closed,
                                 websocket_tcp_dropped, polling_client_gone, websocket_client_frozen],
                         ids=lambda way: way.__name__)
async def test_a_session_that_ends_leaves_everything_and_is_freed_without_a_collector_pass(
        way, settings, sockets) -> None:
    # Fast pings only where the server has to notice a silent client; elsewhere the next ping
    # is 25 s away, so nothing leaves because its heartbeat came round.
    silent = way in (polling_client_gone, websocket_client_frozen)
    async with app_with(settings, **(FAST_PINGS if silent else {})) as (server, api):
        realtime = hub_of(server.app)
        user = await api.register()
        # A first session: what is made once per process (caches, pools) is not counted.
        leave = await way(server, user, sockets)
        await leave()
        await all_left(realtime)
        with collector_off():
            leave = await way(server, user, sockets)
            session = await connected_session(realtime)
            refs = [weakref.ref(session)]
            if session.ws is not None:
                refs.append(weakref.ref(session.ws))
            del session
            await leave()
            await assert_freed_without_gc(realtime, refs)
        while frozen:
            await frozen.pop()()


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_session_the_server_closes_is_freed_without_a_collector_pass(
        transport, settings, sockets) -> None:
    # A long-polling client told to go may not poll for our CLOSE: its session waits a ping
    # timeout for that poll (Node's waits its closeTimeout, 30 s), then leaves.
    async with app_with(settings, **(FAST_PINGS if transport == "polling" else {})) as (server, api):
        realtime = hub_of(server.app)
        user = await api.register()
        client = sockets()
        await client.connect(url_of(server), token=user.access_token, transports=(transport,))
        await realtime.cut_off(next(iter(realtime.connections)))
        await client.wait_disconnected()
        await all_left(realtime)
        with collector_off():
            client = sockets()
            await client.connect(url_of(server), token=user.access_token, transports=(transport,))
            session = await connected_session(realtime)
            refs = [weakref.ref(session)] + ([weakref.ref(session.ws)] if session.ws else [])
            del session
            await realtime.close_revoked(user.id)  # told, then closed: it polls for the CLOSE
            await client.wait_disconnected()
            await assert_freed_without_gc(realtime, refs)


# --- the collector settings ----------------------------------------------------------------

async def test_apps_put_the_collector_settings_back_when_cleaned_up(settings) -> None:
    thresholds, callbacks, frozen_count = gc.get_threshold(), list(gc.callbacks), gc.get_freeze_count()
    settings = settings.model_copy(update={"gc_tuning": True, "gc_gen0_threshold": thresholds[0] + 1234})
    tuned = (settings.gc_gen0_threshold, *thresholds[1:])
    first = await start_app(settings)
    assert gc.get_threshold() == tuned
    assert len(gc.callbacks) == len(callbacks) + 1
    assert gc.get_freeze_count() > frozen_count
    second = await start_app(settings)  # two apps in one process, as in tests
    assert gc.get_threshold() == tuned
    assert len(gc.callbacks) == len(callbacks) + 2  # one pause histogram per app
    await second.close()
    assert gc.get_threshold() == tuned  # the first app still runs
    await first.close()
    assert gc.get_threshold() == thresholds
    assert gc.callbacks == callbacks
    assert gc.get_freeze_count() == frozen_count


async def test_without_tuning_the_app_leaves_the_collector_alone(settings) -> None:
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    server = await start_app(settings.model_copy(update={"gc_tuning": False}))
    assert gc.get_threshold() == thresholds
    await server.close()
    assert gc.get_threshold() == thresholds and gc.callbacks == callbacks
