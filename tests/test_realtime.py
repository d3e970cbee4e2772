"""Socket.IO as a studio frontend sees it: real clients, real Redis, real server processes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

import pytest
import socketio
from aiohttp.test_utils import TestServer
from sqlalchemy import update

from db.models import User
from db.session import transaction
from server import keys
from server.auth.tokens import issue_access_token
from server.realtime.events import EVENT_TYPES, ActivityPosted
from server.realtime.server import hub_of
from server.resources import Resources
from tests.conftest import start_app
from tests.support.api import Api
from tests.support.api import User as ApiUser
from tests.support.events import credits_event, emit_events
from tests.support.processes import ServerProcess, publish_from_other_process
from tests.support.sockets import SocketClient


def url_of(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


def resources_of(server: TestServer) -> Resources:
    return server.app[keys.resources]


async def publish(server: TestServer, user_id: str, count: int, start: int = 0) -> list[int]:
    """Commit `count` credits.updated events, one transaction each, as services do."""
    res = resources_of(server)
    return [(await emit_events(res, user_id, [credits_event(start + n)]))[0] for n in range(count)]


async def settled(server: TestServer, client: SocketClient, user_id: str) -> None:
    """Until everything committed for the user so far has reached the client: a last event
    is sent after it, and one user's events arrive in order, so when it arrives nothing
    earlier is still on its way (absence is then known without waiting a guessed time)."""
    [sentinel] = await emit_events(resources_of(server), user_id, [ActivityPosted(activity={
        "id": str(uuid.uuid4()), "type": "test.sentinel", "message": "sentinel"})])
    for _ in range(200):
        if any(p.get("event_id") == sentinel for _, p in client.events):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"sentinel {sentinel} never arrived: {client.events}")


async def connected(make, server_url: str, user: ApiUser, **kw) -> SocketClient:
    client = make()
    await client.connect(server_url, token=user.access_token, **kw)
    return client


# --- connecting ---------------------------------------------------------------------------

async def _revoke_tokens(server: TestServer, user_id: str) -> None:
    async with transaction(resources_of(server).sessionmaker) as session:
        await session.execute(update(User).where(User.id == uuid.UUID(user_id))
                              .values(token_version=User.token_version + 1))


@pytest.mark.parametrize("case", ["missing", "garbage", "expired", "wrong_secret", "refresh_token",
                                  "revoked", "unknown_user"])
async def test_connect_without_a_valid_access_token_is_refused_as_unauthorized(
        case, app_server, api, settings, sockets) -> None:
    user = await api.register()
    secret = settings.jwt_secret.get_secret_value()
    token = {
        "missing": None,
        "garbage": "not-a-jwt",
        "expired": issue_access_token(user_id=uuid.UUID(user.id), token_version=0, secret=secret, ttl=-60),
        "wrong_secret": issue_access_token(user_id=uuid.UUID(user.id), token_version=0,
                                           secret="another-secret-0123456789abcdef0123", ttl=600),
        "refresh_token": user.refresh_token,
        "revoked": user.access_token,
        "unknown_user": issue_access_token(user_id=uuid.uuid4(), token_version=0, secret=secret, ttl=600),
    }[case]
    if case == "revoked":
        await _revoke_tokens(app_server, user.id)
    client = sockets()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url_of(app_server), token=token)
    assert client.connect_errors and client.connect_errors[0]["message"] == "unauthorized"
    assert not client.sio.connected


async def test_connect_with_a_valid_token_joins_only_the_users_room(app_server, api, sockets) -> None:
    user = await api.register()
    client = await connected(sockets, url_of(app_server), user)
    realtime = hub_of(app_server.app)
    sid = next(iter(realtime.connections))
    assert sorted(realtime.manager.get_rooms(sid, "/")) == sorted([sid, f"user:{user.id}"])
    assert client.sio.connected


async def test_disconnecting_leaves_no_trace_in_the_room_bookkeeping(app_server, api, sockets) -> None:
    users = [await api.register() for _ in range(3)]
    clients = [await connected(sockets, url_of(app_server), user) for user in users for _ in range(2)]
    realtime = hub_of(app_server.app)
    assert len(realtime.connections) == 6
    rooms = realtime.manager.rooms["/"]
    assert {room for room in rooms if isinstance(room, str) and room.startswith("user:")} == \
        {f"user:{user.id}" for user in users}
    for client in clients:
        await client.close()
    for _ in range(50):
        if not realtime.connections:
            break
        await asyncio.sleep(0.02)
    assert realtime.connections == {}
    assert realtime.manager.joined == {} and realtime.manager.gates == {}
    assert not realtime.manager.rooms.get("/")
    assert not realtime.manager.pending_connect and not realtime.manager.pending_disconnect


async def test_a_malformed_last_event_id_is_refused(app_server, api, sockets) -> None:
    user = await api.register()
    client = sockets()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(url_of(app_server), token=user.access_token, last_event_id="yesterday")
    assert client.connect_errors[0]["message"] == "validation_error"
    stranger = sockets()  # without a valid token the answer is only that
    with pytest.raises(socketio.exceptions.ConnectionError):
        await stranger.connect(url_of(app_server), token="not-a-token", last_event_id="yesterday")
    assert stranger.connect_errors[0]["message"] == "unauthorized"


async def test_a_connection_that_never_authenticates_is_closed(settings, database_url) -> None:
    import engineio

    server = await start_app(settings.model_copy(update={"socketio_connect_timeout_seconds": 0.5}))
    client = engineio.AsyncClient()
    closed = asyncio.Event()
    client.on("disconnect", lambda *a: closed.set())
    try:
        await client.connect(url_of(server), transports=["websocket"], engineio_path="socket.io")
        await asyncio.wait_for(closed.wait(), 5)
    finally:
        await client.disconnect()
        await server.close()


# --- delivery -----------------------------------------------------------------------------

async def test_a_user_never_receives_another_users_events(app_server, api, sockets) -> None:
    alice, bob = await api.register(), await api.register()
    a = await connected(sockets, url_of(app_server), alice)
    b = await connected(sockets, url_of(app_server), bob)
    # Asking to join Bob's room is not a thing a client can do.
    reply = await a.call("join", {"room": f"user:{bob.id}"})
    assert reply["ok"] is False and reply["error"]["error"] == "not_found"
    await publish(app_server, bob.id, 3)
    await publish(app_server, alice.id, 1, start=100)
    await b.wait_for("credits.updated", 3)
    received = await a.wait_for("credits.updated", 1)
    await settled(app_server, a, alice.id)
    assert [e["balance"] for e in a.named("credits.updated")] == [100]
    assert received[0]["event_id"] and received[0]["ts"].endswith("Z")


async def test_existing_call_sites_publish_through_the_stream(app_server, api, sockets) -> None:
    """Registration grants signup credits: credits.updated and activity are in the history."""
    user = await api.register()
    client = await connected(sockets, url_of(app_server), user, last_event_id=0)
    credits = await client.wait_for("credits.updated", 1)
    assert credits[0]["balance"] == credits[0]["delta"] > 0
    activity = await client.wait_for("activity", 1)
    assert {a["activity"]["type"] for a in activity} >= {"account.created"}
    assert isinstance(activity[0]["activity"]["created_at"], str)


async def test_an_event_published_by_another_process_reaches_the_client(
        app_server, api, settings, sockets) -> None:
    user = await api.register()
    client = await connected(sockets, url_of(app_server), user)
    ids = await publish_from_other_process(settings, user.id, 3)
    received = await client.wait_for("credits.updated", 3)
    assert [e["event_id"] for e in received] == ids
    assert [e["reason"] for e in received] == [f"from another process #{n}" for n in range(3)]


async def test_two_server_processes_fan_out_through_redis(app_server, api, settings, sockets) -> None:
    user = await api.register()
    async with ServerProcess(settings) as other:
        client = await connected(sockets, other.url, user)
        ids = await publish(app_server, user.id, 2)
        received = await client.wait_for("credits.updated", 2)
        assert [e["event_id"] for e in received] == ids


async def test_revoked_sessions_are_disconnected_in_every_server_process(
        app_server, api, settings, sockets) -> None:
    user = await api.register()
    async with ServerProcess(settings) as other:
        remote = await connected(sockets, other.url, user)
        local = await connected(sockets, url_of(app_server), user)
        reply = await api.put("/api/auth/profile", token=user.access_token, json={
            "current_password": user.password, "new_password": "a brand new password"})
        assert reply.status == 200, reply
        for client in (remote, local):
            await client.wait_disconnected()
            assert client.named("session.revoked") == [{"reason": "signed_out"}]
        retry = sockets()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await retry.connect(other.url, token=user.access_token)
        assert retry.connect_errors[0]["message"] == "unauthorized"


# --- replay -------------------------------------------------------------------------------

async def test_reconnecting_with_last_event_id_replays_missed_events_then_live_ones(
        app_server, api, sockets) -> None:
    user = await api.register()
    first = await connected(sockets, url_of(app_server), user)
    [seen] = await publish(app_server, user.id, 1)
    await first.wait_for("credits.updated", 1)
    await first.close()
    missed = await publish(app_server, user.id, 10, start=1)
    again = await connected(sockets, url_of(app_server), user, last_event_id=seen)
    await again.wait_for("credits.updated", 10)
    live = await publish(app_server, user.id, 2, start=11)
    received = await again.wait_for("credits.updated", 12)
    assert [e["event_id"] for e in received] == missed + live
    assert [e["balance"] for e in received] == list(range(1, 13))


async def test_replay_on_connect_has_no_gap_or_duplicate_while_events_keep_coming(
        app_server, api, sockets) -> None:
    user = await api.register()
    [start] = await publish(app_server, user.id, 1)
    published: list[int] = []

    async def keep_publishing() -> None:
        for n in range(60):
            published.extend(await publish(app_server, user.id, 1, start=n + 1))
            await asyncio.sleep(0.002)

    task = asyncio.create_task(keep_publishing())
    await asyncio.sleep(0.02)
    client = await connected(sockets, url_of(app_server), user, last_event_id=start)
    await task
    await client.wait_for("credits.updated", 60)
    await settled(app_server, client, user.id)
    ids = [e["event_id"] for e in client.named("credits.updated")]
    assert ids == published


async def test_events_replay_answers_through_the_ack_and_live_events_follow(
        app_server, api, sockets) -> None:
    user = await api.register()
    client = await connected(sockets, url_of(app_server), user)
    ids = await publish(app_server, user.id, 5)
    await client.wait_for("credits.updated", 5)
    reply = await client.call("events.replay", {"last_event_id": ids[1]})
    assert reply["ok"] is True
    assert [(e["event"], e["data"]["event_id"]) for e in reply["data"]["events"]] == \
        [("credits.updated", i) for i in ids[2:]]

    published: list[int] = []

    async def keep_publishing() -> None:
        for n in range(40):
            published.extend(await publish(app_server, user.id, 1, start=10 + n))
            await asyncio.sleep(0.002)

    task = asyncio.create_task(keep_publishing())
    await asyncio.sleep(0.01)
    before = len(client.events)
    reply = await client.call("events.replay", {"last_event_id": ids[-1]})
    after_ack = len(client.events)
    await task
    await settled(app_server, client, user.id)
    client.events = [(name, p) for name, p in client.events if name == "credits.updated"]
    acked = [e["data"]["event_id"] for e in reply["data"]["events"]]
    live_before_ack = [p["event_id"] for _, p in client.events[before:after_ack]]
    live_after_ack = [p["event_id"] for _, p in client.events[after_ack:]]
    # Everything after the requested id arrives, in order; nothing after the ack repeats it.
    assert sorted(set(acked + live_after_ack)) == published
    assert acked + live_after_ack == published
    assert set(live_before_ack) <= set(acked)


async def test_events_replay_rejects_a_bad_id_in_the_api_error_shape(app_server, api, sockets) -> None:
    user = await api.register()
    client = await connected(sockets, url_of(app_server), user)
    for payload in ({"last_event_id": "nope"}, {"last_event_id": "1-0", "extra": 1}, None):
        reply = await client.call("events.replay", payload)
        assert reply["ok"] is False
        assert reply["error"]["error"] == "validation_error"
        assert reply["error"]["message"] and isinstance(reply["error"]["details"], list)


async def test_ping_answers_ok(app_server, api, sockets) -> None:
    user = await api.register()
    client = await connected(sockets, url_of(app_server), user)
    reply = await client.call("ping")
    assert reply["ok"] is True and reply["data"]["pong"] is True


# --- history ---------------------------------------------------------------------------

async def test_event_ids_are_gapless_integers_and_payloads_json_safe(app_server, api, sockets) -> None:
    user = await api.register()
    client = await connected(sockets, url_of(app_server), user, last_event_id=0)
    stamp = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
    ids = []
    for n in range(20):
        ids += await emit_events(resources_of(app_server), user.id, [ActivityPosted(activity={
            "id": uuid.uuid4(), "type": "test", "message": f"#{n}", "data": {"at": stamp},
            "created_at": stamp})])
    assert ids == list(range(ids[0], ids[0] + 20))
    received = await client.wait_for("activity", 20)
    while not any(e["event_id"] == ids[-1] for e in received):
        received = await client.wait_for("activity", len(received) + 1)
    # Everything since the account was opened (signup events first), each once, in order.
    assert [p["event_id"] for _, p in client.events] == list(range(1, ids[-1] + 1))
    ours = [e for e in received if e["activity"]["type"] == "test"]
    assert [e["event_id"] for e in ours] == ids
    assert ours[0]["activity"]["created_at"] == "2026-11-26T06:00:00Z"
    assert isinstance(ours[0]["activity"]["id"], str)


async def test_history_keeps_30_days_or_the_last_10000_events(app_server, api) -> None:
    from sqlalchemy import text

    from server.realtime import outbox

    old, recent = await api.register(), await api.register()
    res = resources_of(app_server)
    async with transaction(res.sessionmaker) as session:
        for user, count, age in ((old, 10_100, 40), (recent, 10_100, 1)):
            await session.execute(text("""
                WITH bump AS (UPDATE user_credits SET event_seq = event_seq + :n WHERE user_id = :u
                              RETURNING event_seq)
                INSERT INTO user_events (user_id, seq, name, payload, created_at)
                SELECT :u, bump.event_seq - :n + g, 'activity', '{}'::jsonb, now() - make_interval(days => CAST(:age AS integer))
                FROM bump, generate_series(1, :n) g"""), {"u": uuid.UUID(user.id), "n": count, "age": age})
        await outbox.prune(session)
    async with res.reader.acquire() as reader:
        old_latest, old_events = await outbox.replay(reader, user_id=old.id, after=0)
        recent_latest, recent_events = await outbox.replay(reader, user_id=recent.id, after=0)
    # The signup's own (recent) events stay; of the 40-day-old ones only the newest 10,000 do.
    assert [seq for seq, _, _ in old_events] == [1, 2, 3] + list(range(old_latest - 9_999, old_latest + 1))
    assert len(recent_events) == recent_latest  # nothing of the last 30 days is dropped


def test_there_is_one_event_model_per_api_event() -> None:
    assert {model.name for model in EVENT_TYPES} == {
        "generation.progress", "generation.completed", "generation.failed", "credits.updated",
        "avatar.updated", "subscription.updated", "activity"}


# --- limits -------------------------------------------------------------------------------

async def test_an_oversized_message_cuts_off_that_client_only(app_server, api, settings, sockets) -> None:
    alice, bob = await api.register(), await api.register()
    big = await connected(sockets, url_of(app_server), alice)
    fine = await connected(sockets, url_of(app_server), bob)
    await big.sio.emit("ping", {"blob": "x" * (settings.socketio_max_message_bytes + 1)})
    await big.wait_disconnected()
    assert (await fine.call("ping"))["ok"] is True
    await publish(app_server, bob.id, 1)
    await fine.wait_for("credits.updated", 1)


async def test_a_flooding_client_is_cut_off_and_others_are_unaffected(
        settings, database_url, sockets) -> None:
    """The flooder speaks the wire protocol by hand and ignores the server's goodbye."""
    import aiohttp
    import orjson

    server = await start_app(settings.model_copy(update={"socketio_client_events_per_10s": 20}))
    api = Api(url_of(server))
    try:
        alice, bob = await api.register(), await api.register()
        calm = await connected(sockets, url_of(server), bob)
        async with aiohttp.ClientSession() as http, http.ws_connect(
                url_of(server) + "/socket.io/?EIO=4&transport=websocket") as ws:
            assert (await ws.receive_str()).startswith("0")
            await ws.send_str("40" + orjson.dumps({"token": alice.access_token}).decode())
            assert (await ws.receive_str()).startswith("40")
            sent = 0
            deadline = asyncio.get_running_loop().time() + 10
            while not ws.closed and asyncio.get_running_loop().time() < deadline:
                try:
                    await ws.send_str('42["ping",{}]')
                    sent += 1
                except ConnectionResetError:
                    break
                with contextlib.suppress(TimeoutError):
                    while True:
                        message = await ws.receive(timeout=0.01)
                        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                            aiohttp.WSMsgType.ERROR):
                            break
            assert ws.closed, f"still open after {sent} events"
            assert 20 < sent < 200
        assert (await calm.call("ping"))["ok"] is True
        await publish(server, bob.id, 1)
        await calm.wait_for("credits.updated", 1)
        await calm.close()
    finally:
        await api.close()
        await server.close()


@pytest.mark.parametrize("compression", [False, True])
async def test_permessage_deflate_is_accepted_only_when_configured(
        compression, settings, database_url) -> None:
    import aiohttp

    server = await start_app(settings.model_copy(update={"socketio_compression": compression}))
    try:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                url_of(server) + "/socket.io/?EIO=4&transport=websocket", compress=15) as ws:
            extensions = ws._response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in extensions) is compression
            assert (ws.compress != 0) is compression
    finally:
        await server.close()


# --- behind nginx -------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_clients_through_nginx_receive_events(
        transport, app_server, api, settings, sockets, tmp_path) -> None:
    from tests.support.nginx import Nginx, nginx_binary

    if nginx_binary() is None:
        pytest.fail("nginx is not installed (apt-get install nginx)")
    second = await start_app(settings)
    try:
        with Nginx([app_server.port, second.port], tmp_path) as proxy:
            user = await api.register()
            client = sockets()
            await client.connect(proxy.url, token=user.access_token, transports=(transport,))
            assert client.sio.transport() == transport
            reply = await client.call("ping")
            assert reply["ok"] is True
            ids = await publish(second, user.id, 2) + await publish(app_server, user.id, 1, start=2)
            received = await client.wait_for("credits.updated", 3)
            assert [e["event_id"] for e in received] == ids
            await client.close()
    finally:
        await second.close()
