"""Hostile input and abuse (issue 12): every finding of the attack, replayed against the app."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
import uuid

import aiohttp
import asyncpg
import orjson
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from tests.conftest import _asyncpg_dsn, app_with_route, start_app
from tests.support.api import Api, emails_in, verified_user, wait_for_email
from tests.support.flows import balance
from tests.support.workers import running_worker


def _nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


async def _count(settings, sql: str, *args: object) -> int:
    conn = await asyncpg.connect(_asyncpg_dsn(settings.database_url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_bodies_past_a_routes_cap_are_413_before_reading(api: Api, app_server) -> None:
    started = time.monotonic()
    huge = await api.post("/api/auth/login", data=b"[" + b"1," * (26 * 1024 * 1024) + b"1]",
                          headers={"Content-Type": "application/json"})
    assert huge.status == 413 and huge.body["error"] == "payload_too_large"
    assert time.monotonic() - started < 5  # refused from Content-Length, not read and parsed
    # Auth routes take 16 KB, others 64 KB: just over each cap is refused, with the API shape.
    over_auth = await api.post("/api/auth/login", data=b" " * (16 * 1024 + 1),
                               headers={"Content-Type": "application/json"})
    assert over_auth.status == 413 and set(over_auth.body) == {"error", "message", "details"}
    user = await api.register()
    padded = {"name": "a", "age": 30, "description": "x" * 10}
    body = orjson.dumps(padded)[:-1] + b" " * (64 * 1024 - len(orjson.dumps(padded))) + b"}"
    assert len(body) == 64 * 1024
    fits = await api.post("/api/avatars", data=body, token=user.access_token,
                          headers={"Content-Type": "application/json"})
    assert fits.status != 413, fits
    over = await api.post("/api/avatars", data=body + b" ", token=user.access_token,
                          headers={"Content-Type": "application/json"})
    assert over.status == 413

    # A chunked body announces no length: the server stops reading at the cap.
    async def chunks():
        for _ in range(100):
            yield b" " * 1024

    async with aiohttp.ClientSession() as http:
        async with http.post(api.base_url + "/api/auth/refresh", data=chunks(),
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "payload_too_large"


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/auth/refresh", "/api/auth/register"])
async def test_json_nested_1000_deep_is_400_not_500(api: Api, path: str) -> None:
    for depth in (33, 600, 1000, 1020, 5000):
        reply = await api.post(path, data=_deep_json(depth), headers={"Content-Type": "application/json"})
        assert reply.status == 400, (depth, reply)
        assert reply.body["error"] == "validation_error"
    inside = await api.post(path, data=orjson.dumps({"refresh_token": _nested(40)}),
                            headers={"Content-Type": "application/json"})
    assert inside.status == 400 and "nested deeper" in inside.body["details"][0]["message"]


async def test_socket_frames_nested_1000_deep_get_an_error_ack(api: Api, app_server, settings,
                                                               caplog) -> None:
    user = await api.register()
    ws_url = api.base_url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        assert (await ws.receive_str()).startswith("0")  # engine.io open
        await ws.send_str("40" + orjson.dumps({"token": user.access_token}).decode())
        assert (await ws.receive_str()).startswith("40")  # socket.io connected
        deep = _deep_json(1000).decode()
        frames = {
            1: f'["content.generate",{{"kind":"image","prompt":"x","avatar_id":{deep}}}]',
            2: f'["content.cancel",{{"content_id":{deep}}}]',
            3: f'["content.generate",{deep}]',
            4: f'["events.replay",{{"last_event_id":{deep}}}]',
            5: f'["content.cancel",{{"content_id":{_deep_json(3000).decode()}}}]',  # past orjson's own limit
        }
        for ack_id, frame in frames.items():
            await ws.send_str(f"42{ack_id}{frame}")
        # A binary event: python-socketio would rebuild its (1,000-deep) arguments recursively.
        placeholder = '{"_placeholder":true,"num":0}'
        await ws.send_str('451-6["content.cancel",{"content_id":' + "[" * 1000 + placeholder
                          + "]" * 1000 + "}]")
        await ws.send_bytes(b"\x01\x02")
        frames[6] = "binary"
        acks = {}
        while len(acks) < len(frames):
            message = await asyncio.wait_for(ws.receive_str(), 5)
            if message == "2":  # engine.io ping
                await ws.send_str("3")
                continue
            assert message.startswith("43"), message
            ack_id = int(message[2:message.index("[")])
            acks[ack_id] = orjson.loads(message[message.index("["):])[0]
        for ack_id, ack in acks.items():
            assert ack["ok"] is False, (ack_id, ack)
            assert ack["error"]["error"] == "validation_error", (ack_id, ack)
        await ws.send_str('427["ping"]')  # the connection is still fine
        assert (await asyncio.wait_for(ws.receive_str(), 5)).startswith("437")
    assert await balance(api, user) == 25
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records


async def test_numbers_out_of_range_are_400_with_nothing_charged_or_created(api: Api, worker,
                                                                            settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    for appearance in ({"height": 1e20}, {"height": 2**60}, {"height": -1e7}, {"tall": True, "h": 1e300}):
        reply = await api.post("/api/avatars", token=user.access_token,
                               json={"name": "Big", "age": 30, "appearance": appearance})
        assert reply.status == 400, (appearance, reply)
        assert reply.body["error"] == "validation_error"
    anywhere = await api.post("/api/content/generate/image", token=user.access_token,
                              json={"prompt": "x", "quality": "hd", "unknown": 1e20})
    assert anywhere.status == 400
    assert "9007199254740991" in anywhere.body["details"][0]["message"]
    assert await balance(api, user) == 25
    assert (await api.get("/api/avatars", token=user.access_token)).body["total"] == 0
    ok = await api.post("/api/avatars", token=user.access_token,
                        json={"name": "Fine", "age": 30, "appearance": {"height": 182.5, "eyes": "green"}})
    assert ok.status == 202, ok
    again = await api.get(f"/api/avatars/{ok.body['id']}", token=user.access_token)
    assert again.status == 200 and again.body["appearance"] == {"height": 182.5, "eyes": "green"}


async def test_numeric_fields_are_strict(api: Api, worker, settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    for duration in ("6", True, 6.5):
        reply = await api.post("/api/content/generate/video", token=user.access_token,
                               json={"prompt": "waves", "duration_seconds": duration})
        assert reply.status == 400, (duration, reply)
        assert reply.body["details"][0]["field"] == "duration_seconds"
    for age in ("30", True):
        reply = await api.post("/api/avatars", token=user.access_token, json={"name": "A", "age": age})
        assert reply.status == 400 and reply.body["details"][0]["field"] == "age", (age, reply)
    assert await balance(api, user) == 25


async def test_a_response_that_cannot_be_built_leaves_no_write(settings) -> None:
    email = f"ghost-{uuid.uuid4().hex[:8]}@example.com"

    async def write_then_answer_badly(session) -> dict:
        await session.execute(text("INSERT INTO users (email, password_hash, date_of_birth) "
                                   "VALUES (:email, 'x', '1990-01-01')"), {"email": email})
        return {"too_big": 10**20}  # orjson cannot encode it

    async with app_with_route(settings, "post", "/unencodable", write_then_answer_badly) as client:
        reply = await client.post("/unencodable")
        assert reply.status == 500 and reply.body["error"] == "internal_error"
        assert await _count(settings, "SELECT count(*) FROM users WHERE email = $1", email) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
async def test_json_routes_require_application_json(api: Api, content_type: str | None) -> None:
    user = await api.register()
    headers = {"Content-Type": content_type} if content_type else {}
    body = orjson.dumps({"email": user.email, "password": user.password})
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as http:
        async with http.post(api.base_url + "/api/auth/login", data=body, headers=headers) as resp:
            assert resp.status == 415
            answer = await resp.json()
    assert answer["error"] == "unsupported_media_type" and answer["details"] == []
    json_ok = await api.post("/api/auth/login", data=body,
                             headers={"Content-Type": "application/json; charset=utf-8"})
    assert json_ok.status == 200
    # A route without a body needs no type when nothing is sent.
    assert (await api.post("/api/auth/resend-verification", token=user.access_token)).status == 202


async def test_logout_ends_that_sessions_access_tokens_and_sockets_at_once(api: Api, app_server,
                                                                           sockets) -> None:
    user = await api.register()
    other = await api.login(email=user.email, password=user.password)  # a second device
    mine, theirs = sockets(), sockets()
    await mine.connect(api.base_url, token=user.access_token)
    await theirs.connect(api.base_url, token=other.access_token)
    out = await api.post("/api/auth/logout", token=user.access_token,
                         json={"refresh_token": user.refresh_token})
    assert out.status == 204
    dead = await api.get("/api/auth/profile", token=user.access_token)
    assert dead.status == 401 and dead.body["error"] == "token_revoked"
    await mine.wait_disconnected()
    assert mine.named("session.revoked") == [{"reason": "signed_out"}]
    again = sockets()
    with pytest.raises(Exception):  # noqa: B017 - socketio raises its ConnectionError
        await again.connect(api.base_url, token=user.access_token)
    assert again.connect_errors and again.connect_errors[0]["message"] == "unauthorized"
    # The other device is another session: it goes on.
    assert (await api.get("/api/auth/profile", token=other.access_token)).status == 200
    assert (await theirs.call("ping"))["ok"] is True
    assert not theirs.disconnected.is_set()


async def test_without_redis_signed_out_sessions_stay_out_and_others_go_on(settings, tmp_path) -> None:
    from server.embedded import EmbeddedRedis, free_port

    redis = EmbeddedRedis(tmp_path / "redis", port=free_port())
    lenient = settings.model_copy(update={"redis_url": redis.url, "rate_limit_enabled": False})
    server = await start_app(lenient)
    client = Api(str(server.make_url("")).rstrip("/"))
    try:
        user = await client.register()
        gone = await client.login(email=user.email, password=user.password)
        assert (await client.post("/api/auth/logout", token=gone.access_token,
                                  json={"refresh_token": gone.refresh_token})).status == 204
        redis.stop()
        # The check reads PostgreSQL instead: the signed-out session stays out, others go on.
        out = await client.get("/api/credits", token=gone.access_token)
        assert out.status == 401 and out.body["error"] == "token_revoked"
        assert (await client.get("/api/credits", token=user.access_token)).status == 200
        # A logout that Redis cannot record fails as a whole (its tokens would live again).
        refused = await client.post("/api/auth/logout", token=user.access_token,
                                    json={"refresh_token": user.refresh_token})
        assert refused.status == 503 and refused.body["error"] == "service_unavailable"
        assert (await client.get("/api/credits", token=user.access_token)).status == 200
        assert (await client.post("/api/auth/refresh",
                                  json={"refresh_token": user.refresh_token})).status == 200
    finally:
        await client.close()
        await server.close()
        redis.stop()


async def test_metrics_are_not_public_in_production(settings) -> None:
    from server.embedded import free_port

    production = {"app_env": "production"}
    cases = [
        (production, None, 404),
        ({**production, "metrics_token": SecretStr("scrape-token-0123456789")}, None, 401),
        ({**production, "metrics_token": SecretStr("scrape-token-0123456789")}, "wrong", 401),
        ({**production, "metrics_token": SecretStr("scrape-token-0123456789")}, "scrape-token-0123456789", 200),
        ({}, None, 200),  # development and tests: public
    ]
    for update, token, status in cases:
        server = await start_app(settings.model_copy(update=update))
        client = Api(str(server.make_url("")).rstrip("/"))
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            reply = await client.get("/metrics", headers=headers)
            assert reply.status == status, (update, token, reply.status)
            if status == 200:
                assert "http_requests_total" in reply.body
        finally:
            await client.close()
            await server.close()
    port = free_port()
    server = await start_app(settings.model_copy(update={**production, "metrics_port": port,
                                                         "metrics_host": "127.0.0.1"}))
    client = Api(str(server.make_url("")).rstrip("/"))
    try:
        assert (await client.get("/metrics")).status == 404
        scraper = Api(f"http://127.0.0.1:{port}")
        try:
            own = await scraper.get("/metrics")
        finally:
            await scraper.close()
        assert own.status == 200 and "http_requests_total" in own.body
    finally:
        await client.close()
        await server.close()


async def test_register_answers_the_same_for_a_known_email_and_mails_its_owner(api: Api, worker,
                                                                                settings) -> None:
    outbox = settings.data_dir / "outbox"
    user = await api.register()
    await wait_for_email(outbox, user.email)
    new = await api.post("/api/auth/register", json={
        "email": f"n-{uuid.uuid4().hex[:8]}@example.com", "password": "a long password",
        "date_of_birth": "1990-01-01"})
    known = await api.post("/api/auth/register", json={
        "email": user.email, "password": "another password", "date_of_birth": "1985-01-01"})
    assert known.status == new.status == 202 and known.body == new.body
    assert "access_token" not in known.body
    await wait_for_email(outbox, user.email, count=2)
    subjects = sorted(m["Subject"] for m in emails_in(outbox, user.email))
    assert subjects == ["Verify your Lustify email address", "You already have a Lustify account"]
    assert (await api.post("/api/auth/login", json={"email": user.email,
                                                   "password": "another password"})).status == 401


async def test_forgot_password_takes_the_same_time_whether_or_not_the_account_exists(
        api: Api, settings) -> None:
    user = await api.register()
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"

    async def timed(email: str) -> float:
        started = time.perf_counter()
        reply = await api.post("/api/auth/forgot-password", json={"email": email})
        assert reply.status == 202
        return (time.perf_counter() - started) * 1000

    for _ in range(5):  # warm up both paths
        await timed(user.email)
        await timed(unknown)
    known_ms, unknown_ms = [], []
    for _ in range(50):  # interleaved, so machine noise lands on both alike
        known_ms.append(await timed(user.email))
        unknown_ms.append(await timed(unknown))
    # The fastest fifth of each: what the work itself costs, with less of the machine's noise
    # (a shared CI box) in it; a systematic difference shows there as it does in the median.
    known_fast, unknown_fast = (statistics.quantiles(ms, n=5)[0] for ms in (known_ms, unknown_ms))
    print(f"forgot-password p20: known {known_fast:.2f} ms, unknown {unknown_fast:.2f} ms; medians "
          f"{statistics.median(known_ms):.2f} / {statistics.median(unknown_ms):.2f} ms")
    # Before: 7.3 ms against 4.6 ms, ranges apart. What is left is the token row itself (the
    # known path writes it; the other only flushes its commit): ~0.4 ms on a quiet machine.
    assert abs(known_fast - unknown_fast) < max(1.5, 0.3 * min(known_fast, unknown_fast))
    # Both queued an email (sent now, so sending did not add noise to the timings): the owner
    # a reset link, the unknown address a note.
    async with running_worker(settings):
        await wait_for_email(settings.data_dir / "outbox", unknown, count=55, timeout=30)
        await wait_for_email(settings.data_dir / "outbox", user.email, count=56, timeout=30)
    reset = emails_in(settings.data_dir / "outbox", user.email)
    assert sum(m["Subject"] == "Reset your Lustify password" for m in reset) == 55


async def test_server_header_names_no_software(api: Api) -> None:
    for reply in (await api.get("/health"), await api.get("/api/nope"),
                  await api.post("/api/auth/login", data=b"{", headers={"Content-Type": "application/json"})):
        assert reply.headers["Server"] == "lustify"


async def test_every_dev_log_line_carries_the_request_id_the_500_too(settings) -> None:
    from server.logs import TextFormatter

    async def explode() -> None:
        logging.getLogger("server.test").warning("about to fail")
        raise RuntimeError("boom")

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record).splitlines()[0])

    handler = Collect()
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        async with app_with_route(settings, "get", "/boom", explode) as client:
            reply = await client.get("/boom", headers={"X-Request-ID": "req-0123456789"})
            assert reply.status == 500
    finally:
        root.removeHandler(handler)
    mine = [line for line in lines if "about to fail" in line or "unhandled error" in line]
    assert len(mine) == 2, lines
    assert all("[req-0123456789]" in line for line in mine), mine


async def test_requests_the_http_parser_refuses_are_a_400_and_a_one_line_warning(app_server, caplog) -> None:
    from server.logs import MalformedRequestFilter

    port = app_server.port
    head = "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
    requests = [
        head + "Content-Encoding: br\r\nContent-Length: 4\r\n\r\nabcd",
        head + "Content-Encoding: zstd\r\nContent-Length: 4\r\n\r\nabcd",
        head + "Content-Length: -1\r\n\r\n",
        head + "Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        head + "Authorization: Bearer secret-token-" + "x" * 20_000 + "\r\nContent-Length: 2\r\n\r\n{}",
    ]
    server_log = logging.getLogger("aiohttp.server")
    only_ours = MalformedRequestFilter()
    server_log.addFilter(only_ours)
    caplog.set_level(logging.INFO)
    try:
        for raw in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw.encode())
            status_line = (await asyncio.wait_for(reader.readline(), 5)).decode()
            writer.close()
            assert status_line.split()[1] in ("400", "413", "431"), (raw[:120], status_line)
    finally:
        server_log.removeFilter(only_ours)
    logged = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert logged and all(r.levelno == logging.WARNING and not r.exc_info for r in logged), logged
    assert not any("secret-token" in r.getMessage() for r in caplog.records)


async def test_a_body_that_does_not_decompress_is_a_400(api) -> None:
    sends = [("/api/auth/login", "gzip", {}), ("/api/auth/login", "deflate", {}),
             ("/api/subscriptions/webhook", "gzip", {"Stripe-Signature": "t=1,v1=00"})]
    for path, encoding, extra in sends:
        # A fresh connection each: the server closes one whose body it could not read to the end.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            async with http.post(api.base_url + path, data=b"not compressed at all", headers={
                    "Content-Type": "application/json", "Content-Encoding": encoding, **extra}) as resp:
                body = await resp.json()
        assert resp.status == 400 and body["error"] == "validation_error", (path, encoding, body)
