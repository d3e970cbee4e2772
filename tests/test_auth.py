"""Accounts and sessions, driven over HTTP like a frontend, with a real SMTP server."""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import jwt
import pytest

from tests.conftest import start_app
from tests.support.api import Api, emails_in, verified_user, verify_token_from, wait_for_email
from tests.support.smtp import SmtpServer
from tests.support.workers import running_worker


@pytest.fixture
def smtp():
    with SmtpServer() as server:
        yield server


@pytest.fixture
def smtp_settings(settings, smtp):
    return settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": smtp.port,
                                       "smtp_starttls": False})


@pytest.fixture
async def smtp_api(smtp_settings):
    server = await start_app(smtp_settings)
    client = Api(str(server.make_url("")).rstrip("/"))
    yield client
    await client.close()
    await server.close()


@pytest.fixture
async def smtp_worker(smtp_settings):
    async with running_worker(smtp_settings) as worker:
        yield worker


def _reset_token(message) -> str:
    body = message.get_payload(decode=True).decode()
    return re.search(r"Reset token \(valid for 1 hour, usable once\): (\S+)", body).group(1)


async def test_whole_account_flow_over_smtp(smtp_api: Api, smtp, smtp_worker) -> None:
    api = smtp_api
    email = f"Flow-{uuid.uuid4().hex[:8]}@Example.com"
    reply = await api.post("/api/auth/register", json={
        "email": email, "password": "s3cret-password", "display_name": "Flow",
        "date_of_birth": "1995-05-05"})
    assert reply.status == 202, reply
    assert set(reply.body) == {"status", "message"}  # tokens come from login only
    first = await api.post("/api/auth/login", json={"email": email, "password": "s3cret-password"})
    assert first.status == 200, first  # an unverified account may sign in
    user = first.body["user"]
    assert user["email"] == email.lower() and user["email_verified"] is False
    assert first.body["token_type"] == "Bearer" and first.body["expires_in"] == 900
    access, refresh = first.body["access_token"], first.body["refresh_token"]

    profile = await api.get("/api/auth/profile", token=access)
    assert profile.status == 200
    assert profile.body["credits"]["balance"] == 25
    assert profile.body["plan"]["id"] == "free" and profile.body["subscription"] is None

    message = await smtp.inbox.wait(email.lower())
    assert message["Subject"].startswith("Verify")
    token = verify_token_from(message)
    verified = await api.get(f"/api/auth/verify-email/{token}")
    assert verified.status == 200 and verified.body["user"]["email_verified"] is True
    again = await api.get(f"/api/auth/verify-email/{token}")
    assert again.status == 400 and again.body["error"] == "invalid_token"

    login = await api.post("/api/auth/login", json={"email": email, "password": "s3cret-password"})
    assert login.status == 200
    rotated = await api.post("/api/auth/refresh", json={"refresh_token": login.body["refresh_token"]})
    assert rotated.status == 200
    assert rotated.body["refresh_token"] != login.body["refresh_token"]
    reused = await api.post("/api/auth/refresh", json={"refresh_token": login.body["refresh_token"]})
    assert reused.status == 401 and reused.body["error"] == "token_revoked"
    # The reuse revoked the whole family: the newest token of it is dead too, and so are the
    # access tokens the thief or the owner got from it, at once.
    newest = await api.post("/api/auth/refresh", json={"refresh_token": rotated.body["refresh_token"]})
    assert newest.status == 401 and newest.body["error"] == "token_revoked"
    for access in (login.body["access_token"], rotated.body["access_token"]):
        profile = await api.get("/api/auth/profile", token=access)
        assert profile.status == 401 and profile.body["error"] == "token_revoked"
    # Another family (the first sign-in) still works.
    other = await api.post("/api/auth/refresh", json={"refresh_token": refresh})
    assert other.status == 200

    forgot = await api.post("/api/auth/forgot-password", json={"email": email})
    assert forgot.status == 202
    reset_mail = await smtp.inbox.wait(email.lower(), count=2)
    reset = await api.post("/api/auth/reset-password", json={
        "token": _reset_token(reset_mail), "password": "brand-new-password"})
    assert reset.status == 200
    dead_access = await api.get("/api/auth/profile", token=other.body["access_token"])
    assert dead_access.status == 401 and dead_access.body["error"] == "token_revoked"
    dead_refresh = await api.post("/api/auth/refresh", json={"refresh_token": other.body["refresh_token"]})
    assert dead_refresh.status == 401
    old_password = await api.post("/api/auth/login", json={"email": email, "password": "s3cret-password"})
    assert old_password.status == 401
    new_login = await api.post("/api/auth/login", json={"email": email, "password": "brand-new-password"})
    assert new_login.status == 200
    reuse_reset = await api.post("/api/auth/reset-password", json={
        "token": _reset_token(reset_mail), "password": "another-password"})
    assert reuse_reset.status == 400 and reuse_reset.body["error"] == "invalid_token"


async def test_register_validation_errors_have_field_details(api: Api) -> None:
    reply = await api.post("/api/auth/register", json={
        "email": "not-an-email", "password": "short", "date_of_birth": "2015-01-01", "role": "admin"})
    assert reply.status == 400 and reply.body["error"] == "validation_error"
    fields = {d["field"] for d in reply.body["details"]}
    assert {"email", "password", "date_of_birth", "role"} <= fields


async def test_minors_and_duplicates_are_refused(api: Api) -> None:
    today = time.gmtime()
    seventeen = f"{today.tm_year - 17}-01-01"
    minor = await api.post("/api/auth/register", json={
        "email": f"kid-{uuid.uuid4().hex[:6]}@example.com", "password": "long enough pw",
        "date_of_birth": seventeen})
    assert minor.status == 400
    for written_otherwise in (631152000, 631152000.0, True, ["1990", "01", "01"], "946684800", "0", "1990-1-1"):  # a Unix time is no date of birth
        other = await api.post("/api/auth/register", json={
            "email": f"num-{uuid.uuid4().hex[:6]}@example.com", "password": "long enough pw",
            "date_of_birth": written_otherwise})
        assert other.status == 400 and other.body["details"][0]["field"] == "date_of_birth", other
    user = await api.register()
    fresh = await api.post("/api/auth/register", json={
        "email": f"new-{uuid.uuid4().hex[:8]}@example.com", "password": "long enough pw",
        "date_of_birth": "1990-01-01"})
    dup = await api.post("/api/auth/register", json={
        "email": user.email.upper(), "password": "long enough pw", "date_of_birth": "1990-01-01"})
    # No enumeration: a known email answers exactly like a new one (its owner gets an email).
    assert dup.status == fresh.status == 202 and dup.body == fresh.body
    still = await api.post("/api/auth/login", json={"email": user.email, "password": user.password})
    assert still.status == 200  # the account and its password are untouched


async def test_long_and_unicode_passwords_are_all_significant(api: Api) -> None:
    shared = "p" * 80
    user = await api.register(password=shared + "A")
    wrong = await api.post("/api/auth/login", json={"email": user.email, "password": shared + "B"})
    assert wrong.status == 401
    right = await api.post("/api/auth/login", json={"email": user.email, "password": shared + "A"})
    assert right.status == 200
    uni = await api.register(password="пароль-密码-🔑-" * 8)
    ok = await api.post("/api/auth/login", json={"email": uni.email, "password": "пароль-密码-🔑-" * 8})
    assert ok.status == 200
    too_long = await api.post("/api/auth/register", json={
        "email": f"l-{uuid.uuid4().hex[:6]}@example.com", "password": "x" * 129,
        "date_of_birth": "1990-01-01"})
    assert too_long.status == 400


async def test_login_does_not_reveal_which_emails_exist(api: Api) -> None:
    user = await api.register()
    known = await api.post("/api/auth/login", json={"email": user.email, "password": "wrong-password"})
    unknown = await api.post("/api/auth/login", json={"email": f"nobody-{uuid.uuid4().hex}@example.com",
                                                      "password": "wrong-password"})
    assert known.status == unknown.status == 401
    assert known.body == unknown.body
    f_known = await api.post("/api/auth/forgot-password", json={"email": user.email})
    f_unknown = await api.post("/api/auth/forgot-password", json={"email": f"nobody-{uuid.uuid4().hex}@example.com"})
    assert f_known.status == f_unknown.status == 202
    assert f_known.body == f_unknown.body


async def test_jwt_attacks_are_refused(api: Api, settings) -> None:
    user = await api.register()
    secret = settings.jwt_secret.get_secret_value()
    now = int(time.time())
    good = {"sub": user.id, "typ": "access", "ver": 0, "sid": str(uuid.uuid4()), "iat": now,
            "exp": now + 60}
    none_token = jwt.encode(good, None, algorithm="none")
    attempts = {
        "alg none": none_token,
        "wrong alg": jwt.encode(good, secret + "x" * 40, algorithm="HS512"),
        "wrong secret": jwt.encode(good, "another-secret-another-secret-1234", algorithm="HS256"),
        "expired": jwt.encode({**good, "iat": now - 120, "exp": now - 60}, secret, algorithm="HS256"),
        "refresh as access": user.refresh_token,
        "missing ver": jwt.encode({k: v for k, v in good.items() if k != "ver"}, secret, algorithm="HS256"),
        "missing sub": jwt.encode({k: v for k, v in good.items() if k != "sub"}, secret, algorithm="HS256"),
        "missing sid": jwt.encode({k: v for k, v in good.items() if k != "sid"}, secret, algorithm="HS256"),
        "bad sid": jwt.encode({**good, "sid": "not-a-uuid"}, secret, algorithm="HS256"),
        "wrong typ": jwt.encode({**good, "typ": "refresh"}, secret, algorithm="HS256"),
        "garbage": "a.b.c",
    }
    for name, token in attempts.items():
        reply = await api.get("/api/auth/profile", token=token)
        assert reply.status == 401, name
        expected = "token_expired" if name == "expired" else "unauthorized"
        assert reply.body["error"] == expected, name
    # Bytes that are not UTF-8 in the header (found by schemathesis: was a 500).
    host, port = api.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /api/auth/profile HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xf0\xdc\r\n"
                 b"Connection: close\r\n\r\n")
    status_line = (await reader.read()).split(b"\r\n", 1)[0]
    writer.close()
    assert status_line == b"HTTP/1.1 401 Unauthorized", status_line
    missing = await api.get("/api/auth/profile")
    assert missing.status == 401 and missing.body["error"] == "unauthorized"
    assert (await api.get("/api/auth/profile", token=jwt.encode(good, secret, algorithm="HS256"))).status == 200


async def test_profile_update_rules(api: Api, worker, settings) -> None:
    user = await api.register()
    mass = await api.put("/api/auth/profile", token=user.access_token, json={"email_verified": True})
    assert mass.status == 400 and mass.body["details"][0]["field"] == "email_verified"
    renamed = await api.put("/api/auth/profile", token=user.access_token, json={"display_name": "New Name"})
    assert renamed.status == 200 and renamed.body["user"]["display_name"] == "New Name"
    no_current = await api.put("/api/auth/profile", token=user.access_token, json={"new_password": "another-pass"})
    assert no_current.status == 400
    changed = await api.put("/api/auth/profile", token=user.access_token, json={
        "current_password": user.password, "new_password": "another-pass"})
    assert changed.status == 200
    assert (await api.get("/api/auth/profile", token=user.access_token)).status == 401
    fresh = changed.body["tokens"]["access_token"]
    assert (await api.get("/api/auth/profile", token=fresh)).status == 200
    new_email = f"moved-{uuid.uuid4().hex[:8]}@example.com"
    no_password = await api.put("/api/auth/profile", token=fresh, json={"email": new_email})
    assert no_password.status == 400 and no_password.body["details"][0]["field"] == "current_password"
    moved = await api.put("/api/auth/profile", token=fresh, json={"email": new_email,
                                                                  "current_password": "another-pass"})
    assert moved.status == 200 and moved.body["pending_email"] == new_email
    assert moved.body["user"]["email"] == user.email  # until the new address opens its link
    other = await api.register()
    taken = await api.put("/api/auth/profile", token=fresh, json={"email": other.email,
                                                                  "current_password": "another-pass"})
    # The same answer as for a free address: whether it has an account is not told here.
    assert taken.status == 200 and taken.body["pending_email"] == other.email
    assert taken.body.keys() == moved.body.keys() and taken.body["user"] == moved.body["user"]


async def test_logout_revokes_the_family(api: Api) -> None:
    user = await api.register()
    out = await api.post("/api/auth/logout", token=user.access_token, json={"refresh_token": user.refresh_token})
    assert out.status == 204
    again = await api.post("/api/auth/refresh", json={"refresh_token": user.refresh_token})
    assert again.status == 401 and again.body["error"] == "token_revoked"


async def test_auth_rate_limits_hit_and_recover(settings) -> None:
    from server.config import Settings

    limited = Settings(**{**settings.model_dump(), "rate_limit_auth": "3/2seconds",
                          "jwt_secret": settings.jwt_secret, "db_password": settings.db_password})
    server = await start_app(limited)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        body = {"email": f"rl-{uuid.uuid4().hex[:8]}@example.com", "password": "whatever-pass"}
        statuses = [(await api.post("/api/auth/login", json=body)) for _ in range(4)]
        assert [r.status for r in statuses[:3]] == [401, 401, 401]
        blocked = statuses[3]
        assert blocked.status == 429 and blocked.body["error"] == "rate_limited"
        assert int(blocked.headers["Retry-After"]) >= 1
        assert blocked.headers["X-RateLimit-Limit"] == "3"
        assert blocked.headers["X-RateLimit-Remaining"] == "0"
        await asyncio.sleep(int(blocked.headers["Retry-After"]) + 0.1)
        assert (await api.post("/api/auth/login", json=body)).status == 401
    finally:
        await api.close()
        await server.close()


async def test_a_burst_across_a_window_edge_gets_no_second_allowance(settings) -> None:
    """A fixed window lets 2x the limit through around its edge; the sliding window does not."""
    from server.config import Settings

    limited = Settings(**{**settings.model_dump(), "rate_limit_auth": "5/2seconds",
                          "jwt_secret": settings.jwt_secret, "db_password": settings.db_password})
    server = await start_app(limited)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        body = {"email": f"edge-{uuid.uuid4().hex[:8]}@example.com", "password": "whatever-pass"}
        await asyncio.sleep(2 - time.time() % 2 + 1.5)  # the clock itself: late in a window
        before_edge = [(await api.post("/api/auth/login", json=body)).status for _ in range(5)]
        await asyncio.sleep(2 - time.time() % 2 + 0.05)  # just past the edge
        after_edge = [(await api.post("/api/auth/login", json=body)).status for _ in range(5)]
        assert before_edge == [401] * 5
        assert after_edge.count(401) <= 1 and after_edge.count(429) >= 4, after_edge
    finally:
        await api.close()
        await server.close()


async def test_forwarded_for_is_trusted_only_from_configured_proxies(settings) -> None:
    from server.config import Settings

    limited = Settings(**{**settings.model_dump(), "rate_limit_auth": "2/minute",
                          "jwt_secret": settings.jwt_secret, "db_password": settings.db_password})
    server = await start_app(limited)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        # Not a trusted proxy: spoofed X-Forwarded-For does not buy fresh quota.
        for i in range(3):
            reply = await api.post("/api/auth/forgot-password", json={"email": f"x{i}-{uuid.uuid4().hex[:6]}@example.com"},
                                   headers={"X-Forwarded-For": f"10.0.0.{i}"})
        assert reply.status == 429
    finally:
        await api.close()
        await server.close()
    trusting = Settings(**{**settings.model_dump(), "rate_limit_auth": "2/minute", "trusted_proxies": ["127.0.0.1"],
                           "jwt_secret": settings.jwt_secret, "db_password": settings.db_password,
                           "redis_namespace": settings.redis_namespace + "-b"})
    server = await start_app(trusting)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        for i in range(3):
            reply = await api.post("/api/auth/forgot-password", json={"email": f"y{i}-{uuid.uuid4().hex[:6]}@example.com"},
                                   headers={"X-Forwarded-For": f"10.0.1.{i}"})
            assert reply.status == 202
    finally:
        await api.close()
        await server.close()


def test_email_links_open_the_studio_or_the_frontend_and_always_name_the_api(settings) -> None:
    from server.auth import emails

    bare = emails.verification(settings, to="a@example.com", token="tok-123")
    assert f"{settings.base_url}/api/auth/verify-email/tok-123" in bare.text
    first_link = next(line for line in bare.text.splitlines() if line.startswith("http"))
    assert first_link == f"{settings.base_url}/verify-email#token=tok-123"  # the studio served here
    with_frontend = emails.verification(settings.model_copy(update={"frontend_url": "https://studio.example/"}),
                                        to="a@example.com", token="tok-123")
    first_link = next(line for line in with_frontend.text.splitlines() if line.startswith("http"))
    assert first_link == "https://studio.example/verify-email#token=tok-123"
    assert f"{settings.base_url}/api/auth/verify-email/tok-123" in with_frontend.text
    reset = emails.password_reset(settings, to="a@example.com", token="rst-456")
    assert "rst-456" in reset.text and "/api/auth/reset-password" in reset.text


async def test_bad_input_is_400_and_never_500(api: Api) -> None:
    user = await api.register()
    nul = await api.put("/api/auth/profile", token=user.access_token, json={"display_name": "a\u0000b"})
    assert nul.status == 400 and nul.body["details"][0]["field"] == "display_name"
    nul_key = await api.post("/api/avatars", token=user.access_token,
                             json={"name": "x", "age": 30, "appearance": {"ha\u0000ir": "red"}})
    assert nul_key.status == 400 and nul_key.body["details"][0]["field"] == "appearance.ha\x00ir"
    assert (await api.get("/api/avatars?search=%00", token=user.access_token)).status == 400
    null_password = await api.put("/api/auth/profile", token=user.access_token,
                                  json={"new_password": None, "current_password": user.password})
    assert null_password.status == 200
    for zone in ("localtime", "posixrules", "posix/UTC", "right/UTC", "Nowhere/City"):
        tz = await api.get(f"/api/dashboard/analytics?timeframe=7d&tz={zone}", token=user.access_token)
        assert tz.status == 400 and tz.body["details"][0]["field"] == "tz", zone
        saved = await api.put("/api/auth/profile", token=user.access_token, json={"timezone": zone})
        assert saved.status == 400, zone
    body_on_bodyless = await api.post("/api/auth/resend-verification", token=user.access_token, json={"foo": 1})
    assert body_on_bodyless.status == 400 and body_on_bodyless.body["details"][0]["field"] == "foo"
    assert (await api.post("/api/auth/resend-verification", token=user.access_token)).status == 202
    malformed = await api.post("/api/auth/login", json={"email": "not-an-email", "password": "whatever-pass"})
    assert malformed.status == 401 and malformed.body["error"] == "invalid_credentials"


async def test_passwords_are_taken_exactly_as_typed(api: Api) -> None:
    user = await api.register(password="  spaced out password  ")
    trimmed = await api.post("/api/auth/login", json={"email": user.email, "password": "spaced out password"})
    assert trimmed.status == 401
    exact = await api.post("/api/auth/login", json={"email": user.email, "password": "  spaced out password  "})
    assert exact.status == 200


async def test_a_reset_link_sent_to_an_old_address_dies_with_the_email_change(api: Api, worker, settings) -> None:
    user = await api.register()
    assert (await api.post("/api/auth/forgot-password", json={"email": user.email})).status == 202
    await wait_for_email(settings.data_dir / "outbox", user.email, count=2)
    reset_mail = next(m for m in emails_in(settings.data_dir / "outbox", user.email)
                      if m["Subject"].startswith("Reset"))
    new_email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    moved = await api.put("/api/auth/profile", token=user.access_token, json={
        "email": new_email, "current_password": user.password})
    assert moved.status == 200
    link = verify_token_from(await wait_for_email(settings.data_dir / "outbox", new_email))
    assert (await api.get(f"/api/auth/verify-email/{link}")).status == 200  # the change happens here
    stale = await api.post("/api/auth/reset-password", json={"token": _reset_token(reset_mail),
                                                             "password": "attacker-password"})
    assert stale.status == 400 and stale.body["error"] == "invalid_token"


async def test_reset_requests_by_others_cannot_lock_the_owner_out_nor_flood_an_inbox(settings, worker) -> None:
    from server.config import Settings

    limited = Settings(**{**settings.model_dump(), "rate_limit_auth": "3/minute", "rate_limit_mail": "5/minute",
                          "trusted_proxies": ["127.0.0.1"],  # each request below from its own address
                          "jwt_secret": settings.jwt_secret, "db_password": settings.db_password})
    server = await start_app(limited)
    api = Api(str(server.make_url("")).rstrip("/"))
    addresses = (f"10.9.{n // 250}.{n % 250}" for n in range(1000))

    async def post(path: str, **kw):
        return await api.post(path, headers={"X-Forwarded-For": next(addresses)}, **kw)

    try:
        user = await api.register()  # the verification email: the inbox's first
        resets = [(await post("/api/auth/forgot-password", json={"email": user.email})).status for _ in range(4)]
        assert resets == [202, 202, 202, 429], resets  # three reset requests a minute per address
        login = await post("/api/auth/login", json={"email": user.email, "password": user.password})
        assert login.status == 200, login  # the owner's sign-in has its own count
        resend = [(await post("/api/auth/resend-verification", token=user.access_token)).status for _ in range(7)]
        assert resend == [202] * 7, resend  # never refused: past the inbox's share the email is skipped
        # A last email, asked for after the resends: once it is out, theirs are too (jobs run in order).
        again = await post("/api/auth/register", json={"email": user.email, "password": "whatever pass",
                                                         "date_of_birth": "1990-01-01"})
        assert again.status == 202
        outbox = limited.data_dir / "outbox"
        await wait_for_email(outbox, user.email, count=1 + 3 + 5 + 1)
        subjects = [m["Subject"] for m in emails_in(outbox, user.email)]
        assert sum(s.startswith("Verify") for s in subjects) == 1 + 5, subjects  # sign-up, 5 of the 7 resends
        assert len(subjects) == 10, subjects
    finally:
        await api.close()
        await server.close()


async def test_addresses_of_one_ipv6_block_share_one_allowance(settings) -> None:
    from server.client_address import limit_key
    from server.config import Settings

    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("::ffff:10.0.0.7") == limit_key("10.0.0.7") == "10.0.0.7"
    limited = Settings(**{**settings.model_dump(), "rate_limit_auth": "2/minute", "trusted_proxies": ["127.0.0.1"],
                          "jwt_secret": settings.jwt_secret, "db_password": settings.db_password})
    server = await start_app(limited)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        statuses = [(await api.post("/api/auth/forgot-password", json={"email": f"v6-{i}@example.com"},
                                    headers={"X-Forwarded-For": f"2001:db8:7:7::{i + 1:x}"})).status
                    for i in range(3)]
        assert statuses == [202, 202, 429], statuses
    finally:
        await api.close()
        await server.close()


async def test_an_email_change_happens_when_the_new_address_opens_its_link(api: Api, worker, settings) -> None:
    outbox = settings.data_dir / "outbox"
    user = await verified_user(api, outbox)
    other = await api.register()
    new_email = f"moving-{uuid.uuid4().hex[:8]}@example.com"
    for address in (other.email, new_email):
        reply = await api.put("/api/auth/profile", token=user.access_token,
                              json={"email": address, "current_password": user.password})
        assert reply.status == 200 and reply.body["pending_email"] == address, reply
    # The taken address hears that nothing changed; it gets no link.
    await wait_for_email(outbox, other.email, count=2)  # its own verification email, and this one
    [notice] = [m for m in emails_in(outbox, other.email) if m["Subject"] == "Your Lustify email address"]
    assert "already has" in notice.get_payload(decode=True).decode()
    assert "/verify-email/" not in notice.get_payload(decode=True).decode()
    link = verify_token_from(await wait_for_email(outbox, new_email))
    assert (await api.get("/api/auth/profile", token=user.access_token)).body["user"]["email"] == user.email
    confirmed = await api.get(f"/api/auth/verify-email/{link}")
    assert confirmed.status == 200, confirmed
    assert confirmed.body["user"]["email"] == new_email and confirmed.body["user"]["email_verified"] is True
    assert (await api.get(f"/api/auth/verify-email/{link}")).status == 400  # once
    await wait_for_email(outbox, user.email, count=2)  # the old address hears of the move
    assert any(m["Subject"] == "Your Lustify email address changed" for m in emails_in(outbox, user.email))
    assert (await api.post("/api/auth/login", json={"email": new_email, "password": user.password})).status == 200
    assert (await api.post("/api/auth/login", json={"email": user.email, "password": user.password})).status == 401


async def test_an_email_change_tells_nothing_through_earlier_links_and_dies_with_a_password_reset(
        api: Api, worker, settings) -> None:
    outbox = settings.data_dir / "outbox"
    user = await verified_user(api, outbox)
    other = await api.register()
    mine = f"mine-{uuid.uuid4().hex[:8]}@example.com"
    change = {"current_password": user.password}
    assert (await api.put("/api/auth/profile", token=user.access_token, json={"email": mine, **change})).status == 200
    kept = verify_token_from(await wait_for_email(outbox, mine))
    # A later request voids it whether or not its address is taken: the old link cannot tell.
    assert (await api.put("/api/auth/profile", token=user.access_token,
                          json={"email": other.email, **change})).status == 200
    assert (await api.get(f"/api/auth/verify-email/{kept}")).status == 400
    assert (await api.put("/api/auth/profile", token=user.access_token, json={"email": mine, **change})).status == 200
    pending = verify_token_from(await wait_for_email(outbox, mine, count=2))
    assert (await api.post("/api/auth/forgot-password", json={"email": user.email})).status == 202
    await wait_for_email(outbox, user.email, count=2)
    [reset_mail] = [m for m in emails_in(outbox, user.email) if m["Subject"].startswith("Reset")]
    reset = await api.post("/api/auth/reset-password", json={"token": _reset_token(reset_mail),
                                                             "password": "a fresh password"})
    assert reset.status == 200, reset
    assert (await api.get(f"/api/auth/verify-email/{pending}")).status == 400  # the owner recovered first
