"""Socket.IO frames a hostile client writes by hand: reserved event names, malformed and binary packets."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import aiohttp
import orjson

from server import keys
from server.realtime.server import hub_of
from tests.support.api import verified_user
from tests.support.flows import balance
from tests.test_realtime import publish, url_of


@asynccontextmanager
async def joined(server, token: str):
    """Engine.IO by hand: OPEN received, namespace joined; the websocket and the socket's sid."""
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url_of(server) + "/socket.io/?EIO=4&transport=websocket") as ws:
        assert (await ws.receive_str()).startswith("0")
        await ws.send_str("40" + orjson.dumps({"token": token}).decode())
        joined_packet = await ws.receive_str()
        assert joined_packet.startswith("40"), joined_packet
        yield ws, orjson.loads(joined_packet[2:])["sid"]


async def frames_until(ws, predicate, timeout: float = 5.0) -> list[str]:
    """Text frames received (pings answered) until one satisfies `predicate`."""
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                seen.append(f"<{message.type.name}>")
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.CLOSING):
                    return seen
                continue
            if message.data == "2":
                await ws.send_str("3")
                continue
            seen.append(message.data)
            if predicate(message.data):
                return seen


def ack(frames: list[str], ack_id: int) -> list:
    prefix = f"43{ack_id}"
    [answer] = [frame for frame in frames if frame.startswith(prefix) and frame[len(prefix)] == "["]
    return orjson.loads(answer[len(prefix):])


async def test_a_client_event_named_disconnect_is_only_an_unknown_event(app_server, api) -> None:
    user = await api.register()
    realtime = hub_of(app_server.app)
    async with joined(app_server, user.access_token) as (ws, sid):
        await ws.send_str('421["disconnect"]')
        await ws.send_str('422["connect",{"token":"x"}]')
        await ws.send_str('423["*","someone else\'s sid"]')
        frames = await frames_until(ws, lambda f: f.startswith("433"))
        assert all(ack(frames, n)[0]["ok"] is False for n in (1, 2, 3)), frames
        assert sid in realtime.connections  # still known, so its logout still finds it
        ids = await publish(app_server, user.id, 1)
        frames = await frames_until(ws, lambda f: f.startswith('42["credits.updated"'))
        assert orjson.loads(frames[-1][2:])[1]["event_id"] == ids[0]
        out = await api.post("/api/auth/logout", token=user.access_token,
                             json={"refresh_token": user.refresh_token})
        assert out.status == 204, out
        frames = await frames_until(ws, lambda f: False)  # until the server closes it
        assert any(frame.startswith('42["session.revoked"') for frame in frames), frames
    assert sid not in realtime.connections


async def test_malformed_frames_are_answered_without_a_traceback(app_server, api, caplog) -> None:
    user = await api.register()
    caplog.set_level(logging.ERROR)
    async with joined(app_server, user.access_token) as (ws, _):
        for frame in ('421[]', '422{"a":1}', '423[1,2]', '424["ping"', '425["ping","\\ud800"]', "4z"):
            await ws.send_str(frame)
        await ws.send_str('426["ping"]')
        frames = await frames_until(ws, lambda f: f.startswith("436"))
        for ack_id in (1, 2, 3):
            assert ack(frames, ack_id)[0]["ok"] is False, frames
        assert ack(frames, 6)[0]["ok"] is True  # the socket still works
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_flood_of_malformed_frames_is_cut_off_like_any_other(app_server, api, settings) -> None:
    user = await api.register()
    async with joined(app_server, user.access_token) as (ws, _):
        for _ in range(settings.socketio_client_events_per_10s + 5):
            await ws.send_str("42[]")
        frames = await frames_until(ws, lambda f: False, timeout=10)
    assert frames[-1].startswith("<CLOS"), frames[-5:]


async def test_binary_attachments_are_refused_not_kept(app_server, api) -> None:
    user = await api.register()
    sio = hub_of(app_server.app).sio
    async with joined(app_server, user.access_token) as (ws, _):
        await ws.send_str('4599999-["ping",{"_placeholder":true,"num":0}]')
        for _ in range(20):
            await ws.send_bytes(b"\x00" * 60_000)
        await ws.send_str('427["ping"]')
        frames = await frames_until(ws, lambda f: f.startswith("437"))
        assert ack(frames, 7)[0]["ok"] is True
        assert sio._binary_packet == {}


async def test_a_socket_cut_off_for_flooding_still_acks_every_action_it_was_charged_for(
        app_server, api, settings, worker) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    limit = settings.socketio_client_events_per_10s
    async with joined(app_server, user.access_token) as (ws, _):
        for n in range(1, limit + 2):
            await ws.send_str(f"42{n}" + orjson.dumps(
                ["content.generate", {"kind": "image", "prompt": f"a lamp, take {n}"}]).decode())
        frames = await frames_until(ws, lambda f: False, timeout=30)
    acks = {n: ack(frames, n)[0] for n in range(1, limit + 2) if any(f.startswith(f"43{n}[") for f in frames)}
    assert acks[limit + 1]["error"]["error"] == "rate_limited"
    assert len(acks) == limit + 1, sorted(set(range(1, limit + 2)) - set(acks))
    accepted = {a["data"]["id"] for a in acks.values() if a["ok"]}
    listed = await api.get("/api/content", token=user.access_token)
    assert {item["id"] for item in listed.body["items"]} == accepted and len(accepted) == 5
    assert await balance(api, user) == 0


async def test_a_socket_being_cut_off_hears_nothing_more_and_takes_no_new_action(
        app_server, api, settings, worker, database_url) -> None:
    from tests.test_idempotency import _CreditsLocked

    user = await verified_user(api, settings.data_dir / "outbox")
    limit = settings.socketio_client_events_per_10s
    async with joined(app_server, user.access_token) as (ws, sid), _CreditsLocked(database_url, user) as money:
        await ws.send_str('421["content.generate",{"kind":"image","prompt":"a slow lamp"}]')
        await money.wait_for_waiters()  # charging, inside its transaction
        for n in range(limit):  # past the limit: the socket is cut off, but owes the first an ack
            await ws.send_str(f'42{100 + n}["ping"]')
        frames = await frames_until(ws, lambda f: f.startswith(f"43{100 + limit - 1}["))
        assert ack(frames, 100 + limit - 1)[0]["error"]["error"] == "rate_limited"
        assert sid in hub_of(app_server.app).closing
        # Sent to its room while it closes (straight to Redis: the outbox row lock is held here).
        marker = {"activity": {"id": "while-closing", "type": "test", "message": "test #0"}, "event_id": 10**6}
        await app_server.app[keys.resources].publisher.publish_durable(user.id, [(10**6, "activity", marker)])
        await ws.send_str('422["ping"]')
        await money.release()
        frames = await frames_until(ws, lambda f: False, timeout=15)
    assert ack(frames, 2)[0]["ok"] is False  # refused: the connection is closing
    assert ack(frames, 1)[0]["ok"] is True  # the charged action still got its answer
    assert not any("test #0" in f for f in frames), frames
