"""Engine.IO under the Socket.IO layer, as clients meet it: long-polling, websocket, the upgrade
between them, server pings, dead and stalled peers, and the handshake's checks."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
import socketio
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from server.realtime.publisher import user_room
from server.realtime.server import hub_of
from tests.conftest import start_app
from tests.support.api import Api
from tests.test_realtime import connected, publish, url_of

# Whole seconds: engine.io announces the ping interval to clients in whole seconds.
FAST_PINGS = {"socketio_ping_interval_seconds": 1.0, "socketio_ping_timeout_seconds": 1.0}


@asynccontextmanager
async def app_with(settings, **overrides: Any):
    server = await start_app(settings.model_copy(update=overrides))
    api = Api(url_of(server))
    try:
        yield server, api
    finally:
        await api.close()
        await server.close()


async def eventually(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def raw_socket(server: TestServer, token: str, **headers: str):
    """Engine.IO by hand over aiohttp's websocket client: OPEN received, namespace joined."""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url_of(server) + "/socket.io/?EIO=4&transport=websocket", headers=headers) as ws:
        opening = await ws.receive_str()
        assert opening.startswith("0")
        await ws.send_str("40" + orjson.dumps({"token": token}).decode())
        assert (await ws.receive_str()).startswith("40")
        yield ws


# --- transports -----------------------------------------------------------------------------

async def test_a_long_polling_client_calls_and_receives_events(app_server, api, sockets) -> None:
    user = await api.register()
    client = await connected(sockets, url_of(app_server), user, transports=("polling",))
    assert client.sio.transport() == "polling"
    assert (await client.call("ping"))["ok"] is True
    ids = await publish(app_server, user.id, 3)
    received = await client.wait_for("credits.updated", 3)
    assert [event["event_id"] for event in received] == ids


async def test_polling_upgrades_to_websocket_without_losing_or_reordering_events(
        app_server, api, sockets) -> None:
    user = await api.register()
    client = sockets()
    ids: list[str] = []

    async def keep_publishing() -> None:
        for n in range(30):
            ids.extend(await publish(app_server, user.id, 1, start=n))
            await asyncio.sleep(0.005)

    await client.connect(url_of(app_server), token=user.access_token,
                         transports=("polling", "websocket"))
    await keep_publishing()  # straddles the upgrade, which starts right after connecting
    received = await client.wait_for("credits.updated", 30)
    assert [event["event_id"] for event in received] == ids
    await eventually(lambda: client.sio.transport() == "websocket")
    assert (await client.call("ping"))["ok"] is True
    ids.extend(await publish(app_server, user.id, 1, start=99))
    received = await client.wait_for("credits.updated", 31)
    assert [event["event_id"] for event in received] == ids


async def test_a_websocket_from_an_origin_not_allowed_is_refused(app_server, api, settings) -> None:
    user = await api.register()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with raw_socket(app_server, user.access_token, Origin="https://elsewhere.example"):
            pass
    assert refused.value.status == 400
    async with raw_socket(app_server, user.access_token, Origin=settings.cors_origins[0]) as ws:
        assert not ws.closed


async def test_an_engineio_version_other_than_4_is_refused(app_server) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url_of(app_server) + "/socket.io/?EIO=3&transport=websocket")
        assert refused.value.status == 400
        async with http.get(url_of(app_server) + "/socket.io/?EIO=3&transport=polling") as reply:
            assert reply.status == 400


async def test_the_server_subscribes_to_redis_before_the_first_client_connects(settings) -> None:
    async with app_with(settings) as (server, _):
        manager = hub_of(server.app).manager
        assert manager.subscribed.is_set()
        redis = Redis.from_url(settings.redis_dsn)
        try:
            [(_, subscribers)] = await redis.pubsub_numsub(manager.channel)
        finally:
            await redis.aclose()
        assert subscribers >= 1


# --- heartbeat ------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_server_pings_keep_an_idle_client_connected(transport, settings, sockets) -> None:
    async with app_with(settings, **FAST_PINGS) as (server, api):
        user = await api.register()
        client = await connected(sockets, url_of(server), user, transports=(transport,))
        await asyncio.sleep(4.5)  # more than twice ping interval + ping timeout
        assert client.sio.connected and not client.disconnected.is_set()
        ids = await publish(server, user.id, 1)
        assert [e["event_id"] for e in await client.wait_for("credits.updated", 1)] == ids
        await client.close()


async def test_the_server_pings_each_interval_after_the_last_pong(settings) -> None:
    async with app_with(settings, **FAST_PINGS) as (server, api):
        user = await api.register()
        async with raw_socket(server, user.access_token) as ws:
            pings: list[float] = []
            started = time.monotonic()
            while time.monotonic() - started < 3.6:
                try:
                    message = await ws.receive_str(timeout=0.2)
                except TimeoutError:
                    continue
                if message == "2":
                    pings.append(time.monotonic())
                    await ws.send_str("3")
            assert len(pings) == 3, pings
            gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
            assert all(0.95 <= gap <= 1.6 for gap in gaps), gaps
            assert not ws.closed


async def test_a_client_that_stops_answering_pings_is_closed(settings) -> None:
    async with app_with(settings, **FAST_PINGS) as (server, api):
        realtime = hub_of(server.app)
        user = await api.register()
        async with raw_socket(server, user.access_token) as ws:
            assert len(realtime.connections) == 1
            started = time.monotonic()
            received = []
            while not ws.closed and time.monotonic() - started < 6:
                message = await ws.receive(timeout=6)
                if message.type is aiohttp.WSMsgType.TEXT:
                    received.append(message.data)  # pings, never answered
            assert ws.closed
            assert received[-1] == "1"  # engine.io CLOSE before the websocket closes
            assert 1.9 < time.monotonic() - started < 4.0
        await eventually(lambda: not realtime.connections and not realtime.sio.eio.sockets)


# --- peers that stop reading --------------------------------------------------------------

def _client_frame(text: str) -> bytes:
    """A masked websocket text frame (all-zero mask: the payload goes as is)."""
    payload = text.encode()
    if len(payload) < 126:
        header = struct.pack("!BB", 0x81, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
    return header + b"\0\0\0\0" + payload


async def _stalled_client(server: TestServer, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Joins over a raw TCP websocket with a tiny receive buffer, then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: test\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    writer.write(_client_frame("40" + orjson.dumps({"token": token}).decode()))
    # OPEN, then the CONNECT reply: two small unmasked server frames.
    for _ in range(2):
        _, length = await reader.readexactly(2)
        await reader.readexactly(length)
    return reader, writer


async def test_a_client_that_stops_reading_holds_up_no_one_and_is_closed(settings, sockets) -> None:
    async with app_with(settings, **FAST_PINGS) as (server, api):
        realtime = hub_of(server.app)
        stalled_user, calm_user = await api.register(), await api.register()
        calm = await connected(sockets, url_of(server), calm_user)
        _, writer = await _stalled_client(server, stalled_user.access_token)
        await eventually(lambda: len(realtime.connections) == 2)
        # ~8 MB for the stalled peer: beyond every socket buffer on the way, so its writes
        # back up in the server. Delivery to one peer never waits for that peer to drain.
        blob = "x" * 16_000
        started = time.monotonic()
        for _ in range(500):
            await realtime.sio.emit("bulk", {"blob": blob}, room=user_room(stalled_user.id))
        assert time.monotonic() - started < 5
        ids = await publish(server, calm_user.id, 1)
        assert [e["event_id"] for e in await calm.wait_for("credits.updated", 1, timeout=2)] == ids
        # Its pings go unanswered (they sit behind the backlog): the server drops it.
        await eventually(lambda: len(realtime.connections) == 1, timeout=8)
        assert calm.sio.connected and (await calm.call("ping"))["ok"] is True
        writer.close()


async def test_a_polling_client_leaving_or_refused_is_not_left_hanging(app_server, api) -> None:
    """The server answers the pending long-poll when the client says CLOSE (as Node's does);
    python-engineio's client otherwise waits for it until the ping timeout (~45 s)."""
    user = await api.register()
    refused = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await asyncio.wait_for(refused.connect(url_of(app_server), auth={"token": "bad"},
                                               transports=["polling"], wait_timeout=5), 5)
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url_of(app_server), auth={"token": user.access_token}, transports=["polling"],
                         wait_timeout=5)
    assert (await client.call("ping", timeout=5))["ok"] is True
    await asyncio.wait_for(client.disconnect(), 5)
