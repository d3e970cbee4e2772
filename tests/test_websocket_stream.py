"""The websocket protocol under new Engine.IO sessions, spoken by hand over TCP: the handshake,
frames split, joined, trickled and broken, closes from either side, and what a session costs."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from server.realtime import engine
from server.realtime.server import hub_of
from server.realtime.websocket import WebSocketStream
from tests.test_realtime_transport import app_with, eventually

KEY, ACCEPT = "dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's own example
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(**extra: str) -> bytes:
    headers = {"Host": "test", "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": KEY, **extra}
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n{lines}\r\n".encode()


def frame(kind: int, payload: bytes | str, *, fin: bool = True, masked: bool = True,
          first_bits: int = 0, length: int | None = None) -> bytes:
    """A client frame, masked with a random key as a browser's is."""
    data = payload.encode() if isinstance(payload, str) else payload
    n = len(data) if length is None else length
    first = (0x80 if fin else 0) | first_bits | kind
    mask_bit = 0x80 if masked else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return header + data
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


class Peer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        assert not second & 0x80, "server frames are not masked"
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(n), 5)

    async def read_text(self) -> str:
        kind, payload = await self.read_frame()
        assert kind == TEXT, (kind, payload)
        return payload.decode()

    async def closed_with(self) -> int:
        """The close code the server sent, after which it closes the connection."""
        kind, payload = await self.read_frame()
        while kind == TEXT:  # packets sent before the close
            kind, payload = await self.read_frame()
        assert kind == CLOSE, (kind, payload)
        assert await asyncio.wait_for(self.reader.read(), 5) == b""
        return struct.unpack("!H", payload[:2])[0]

    def send(self, data: bytes) -> None:
        self.writer.write(data)


@asynccontextmanager
async def peer(server: TestServer, first_bytes: bytes = b"", **headers: str) -> AsyncIterator[Peer]:
    """A websocket by hand: upgrade (plus `first_bytes` in the same write), 101 read, OPEN read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(upgrade_request(**headers) + first_bytes)
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
        assert head.startswith("HTTP/1.1 101"), head
        assert f"Sec-WebSocket-Accept: {ACCEPT}" in head
        p = Peer(reader, writer)
        assert (await p.read_text()).startswith("0{")
        yield p
    finally:
        writer.close()


def join(token: str) -> str:
    return "40" + orjson.dumps({"token": token}).decode()


@pytest.fixture
async def server(settings):
    async with app_with(settings) as (server, api):
        yield server, api


async def test_sessions_live_on_their_transport_without_aiohttp_or_a_task(server) -> None:
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    before, http_connections = len(asyncio.all_tasks()), len(app.runner.server._connections)
    async with peer(app) as a, peer(app) as b, peer(app) as c:
        for p in (a, b, c):
            p.send(frame(TEXT, join(user.access_token)))
            assert (await p.read_text()).startswith("40{")
        await eventually(lambda: len(hub.connections) == 3)
        assert len(app.runner.server._connections) == http_connections  # aiohttp let go of all three
        assert len(asyncio.all_tasks()) <= before + 1  # no task per socket (+ the heartbeat wheel)
        a.send(frame(TEXT, '421["ping"]'))
        assert (await a.read_text()).startswith("431[{")
    await eventually(lambda: not hub.connections and not hub.sio.eio.sockets)


async def test_frames_sent_with_the_upgrade_request_are_read(server) -> None:
    app, api = server
    user = await api.register()
    async with peer(app, frame(PING, b"early") + frame(TEXT, join(user.access_token))) as p:
        assert await p.read_frame() == (PONG, b"early")
        assert (await p.read_text()).startswith("40{")


async def test_a_fragmented_message_with_a_ping_inside_is_one_message(server) -> None:
    app, api = server
    user = await api.register()
    message = join(user.access_token).encode()
    async with peer(app) as p:
        p.send(frame(TEXT, message[:5], fin=False))
        p.send(frame(PING, b"mid"))
        p.send(frame(0x0, message[5:20], fin=False) + frame(0x0, message[20:]))
        assert await p.read_frame() == (PONG, b"mid")
        assert (await p.read_text()).startswith("40{")


async def test_a_large_frame_trickling_in_is_read_once_whole(server) -> None:
    app, api = server
    user = await api.register()
    async with peer(app) as p:
        p.send(frame(TEXT, join(user.access_token)))
        assert (await p.read_text()).startswith("40{")
        data = frame(TEXT, '427["ping",{"pad":"' + "x" * 40_000 + '"}]')
        for start in range(0, len(data), 997):
            p.send(data[start:start + 997])
            await p.writer.drain()
        assert (await p.read_text()).startswith("437[")


@pytest.mark.parametrize(("broken", "code"), [
    (frame(TEXT, "4", masked=False), 1002),  # a client's frames must be masked
    (frame(TEXT, "4", first_bits=0x40), 1002),  # a reserved bit, with no extension agreed
    (frame(0x0, "4"), 1002),  # a continuation of nothing
    (frame(0x3, "4"), 1002),  # an opcode RFC 6455 does not define
    (frame(PING, "x" * 126), 1002),  # control frames carry at most 125 bytes
    (frame(PING, "x", fin=False), 1002),  # and are never fragmented
    (frame(TEXT, b"4\xff\xfe"), 1007),  # text that is not UTF-8
    (frame(TEXT, b"", length=2**40)[:14], 1009),  # beyond the message limit: refused on its header
    (frame(TEXT, "x" * 40_000, fin=False) + frame(0x0, "x" * 40_000), 1009),  # in pieces, too
])
async def test_a_broken_frame_closes_the_connection_with_its_reason(server, broken, code) -> None:
    app, _ = server
    hub = hub_of(app.app)
    async with peer(app) as p:
        p.send(broken)
        assert await p.closed_with() == code
    await eventually(lambda: not hub.sio.eio.sockets)


@pytest.mark.parametrize("leaving", ["close frame", "dropped"])
async def test_a_client_that_leaves_ends_its_session(server, leaving) -> None:
    """With a close frame (answered with its own code), or its TCP connection just gone."""
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    async with peer(app) as p:
        p.send(frame(TEXT, join(user.access_token)))
        assert (await p.read_text()).startswith("40{")
        await eventually(lambda: len(hub.connections) == 1)
        if leaving == "close frame":
            p.send(frame(CLOSE, struct.pack("!H", 1001)))
            assert await p.closed_with() == 1001
        else:
            p.writer.transport.abort()
    await eventually(lambda: not hub.connections and not hub.sio.eio.sockets)


@pytest.mark.parametrize("headers", [{"Sec-WebSocket-Key": "c2hvcnQ="}, {"Sec-WebSocket-Version": "99"}])
async def test_an_invalid_upgrade_request_gets_no_websocket(server, headers) -> None:
    app, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(upgrade_request(**headers))
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    assert head.startswith("HTTP/1.1 400"), head
    writer.close()


async def test_with_compression_on_websockets_go_aiohttps_way_and_deflate(settings) -> None:
    async with app_with(settings, socketio_compression=True) as (app, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(upgrade_request(**{"Sec-WebSocket-Extensions": "permessage-deflate"}))
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
        assert head.startswith("HTTP/1.1 101") and "permessage-deflate" in head, head
        writer.close()


# --- polling sessions upgrading -------------------------------------------------------------

@asynccontextmanager
async def polling_session(server: TestServer, token: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """An Engine.IO session over long-polling, joined: (the HTTP client, its sid)."""
    base = f"http://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as response:
            sid = orjson.loads((await response.text())[1:])["sid"]
        async with http.post(f"{base}&sid={sid}", data=join(token)) as response:
            assert await response.text() == "OK"
        async with http.get(f"{base}&sid={sid}") as response:
            assert (await response.text()).startswith("40{")
        yield http, sid


async def upgrade(server: TestServer, sid: str) -> Peer:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request().replace(b"transport=websocket", f"transport=websocket&sid={sid}".encode()))
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    assert head.startswith("HTTP/1.1 101"), head
    return Peer(reader, writer)


async def test_an_upgraded_polling_session_moves_onto_a_stream(server) -> None:
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    async with polling_session(app, user.access_token) as (_, sid):
        p = await upgrade(app, sid)
        p.send(frame(TEXT, "2probe"))
        assert await p.read_text() == "3probe"
        p.send(frame(TEXT, "5"))
        await eventually(lambda: isinstance(hub.sio.eio.sockets[sid].ws, WebSocketStream))
        p.send(frame(TEXT, '421["ping"]'))
        reply = await p.read_text()
        if reply == "6":  # the NOOP that would have ended a pending poll, flushed with the queue
            reply = await p.read_text()
        assert reply.startswith("431[{")
        p.send(frame(CLOSE, struct.pack("!H", 1000)))
        assert await p.closed_with() == 1000
    await eventually(lambda: not hub.connections and not hub.sio.eio.sockets)


@pytest.mark.parametrize("steps", [["2nonsense"], ["2probe", "4nonsense"], ["2probe"]])
async def test_an_upgrade_that_goes_wrong_leaves_the_session_on_polling(server, monkeypatch, steps) -> None:
    monkeypatch.setattr(engine, "UPGRADE_TIMEOUT_SECONDS", 0.5)  # the last case never says UPGRADE
    app, api = server
    hub = hub_of(app.app)
    user = await api.register()
    async with polling_session(app, user.access_token) as (http, sid):
        p = await upgrade(app, sid)
        for step in steps:
            p.send(frame(TEXT, step))
        assert await p.closed_with() == 1000
        session = hub.sio.eio.sockets[sid]
        assert session.ws is None and not session.upgrading and not session.upgraded
        base = f"http://127.0.0.1:{app.port}/socket.io/?EIO=4&transport=polling&sid={sid}"
        async with http.post(base, data='421["ping"]') as response:
            assert await response.text() == "OK"
        texts = ""
        while "431[" not in texts:  # the probe's NOOP may come first
            async with http.get(base) as response:
                texts += await response.text()
