"""Idempotency-Key: a client that retries after a lost response is charged once and gets the
first answer again, over REST and the socket alike; a crash leaves the work and its answer
together or neither."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg
import pytest
from multidict import CIMultiDict

from db.session import after_commit, transaction
from server import idempotency, keys
from server.activity import record as record_activity
from server.credits import ledger
from server.errors import Conflict, RateLimited, ServiceUnavailable
from tests.conftest import _asyncpg_dsn, start_app
from tests.support.api import Api, User, verified_user
from tests.support.flows import balance
from tests.support.processes import ServerProcess
from tests.support.sockets import SocketClient
from tests.support.workers import running_worker

IMAGE = "/api/content/generate/image"
BODY = {"prompt": "a lighthouse at dawn", "quality": "standard"}
KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


async def _rows(database_url: str, sql: str, *args) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _spends(database_url: str, user: User) -> list[asyncpg.Record]:
    return await _rows(database_url, "SELECT amount, reference_id FROM credit_transactions "
                                     "WHERE user_id = $1 AND type = 'spend'", uuid.UUID(user.id))


async def _content_count(database_url: str, user: User) -> int:
    rows = await _rows(database_url, "SELECT count(*) AS n FROM generated_content WHERE user_id = $1",
                       uuid.UUID(user.id))
    return rows[0]["n"]


async def _recorded(database_url: str, user: User) -> list[str]:
    rows = await _rows(database_url, "SELECT key FROM idempotency_keys WHERE user_id = $1 ORDER BY key",
                       uuid.UUID(user.id))
    return [r["key"] for r in rows]


class _CreditsLocked:
    """Holds the user's money row, so a request that charges waits inside its transaction."""

    def __init__(self, database_url: str, user: User) -> None:
        self.database_url, self.user = database_url, user
        self.released = False

    async def __aenter__(self) -> _CreditsLocked:
        self.conn = await asyncpg.connect(_asyncpg_dsn(self.database_url))
        self.tx = self.conn.transaction()
        await self.tx.start()
        await self.conn.execute("SELECT 1 FROM user_credits WHERE user_id = $1 FOR UPDATE", uuid.UUID(self.user.id))
        return self

    async def wait_for_waiters(self, count: int = 1, timeout: float = 10) -> None:
        """Until `count` other sessions of this database wait on a lock."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            # Activity statistics are a snapshot per transaction, and this one stays open.
            await self.conn.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await self.conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
            if waiting >= count:
                return
            assert asyncio.get_running_loop().time() < deadline, "no request is waiting on the lock"
            await asyncio.sleep(0.02)

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.tx.rollback()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
        await self.conn.close()


async def test_same_key_and_body_replays_the_first_response_and_charges_once(
        api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    first = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "order-1"})
    assert first.status == 202, first
    assert REPLAYED not in first.headers
    # The same request, its fields in another order and a default left out: still the same.
    again = await api.post(IMAGE, json={"prompt": BODY["prompt"]}, token=user.access_token,
                           headers={KEY: "order-1"})
    assert again.status == 202 and again.headers[REPLAYED] == "true"
    assert again.body == first.body  # the first answer, even though the content has moved on since
    assert [r["reference_id"] for r in await _spends(database_url, user)] == [first.body["id"]]
    assert await balance(api, user) == 20 and await _content_count(database_url, user) == 1

    # Without a key nothing is deduplicated.
    plain = [await api.post(IMAGE, json=BODY, token=user.access_token) for _ in range(2)]
    assert [p.status for p in plain] == [202, 202] and plain[0].body["id"] != plain[1].body["id"]
    assert REPLAYED not in plain[1].headers
    assert len(await _spends(database_url, user)) == 3 and await _recorded(database_url, user) == ["order-1"]


async def test_twenty_concurrent_sends_of_one_key_charge_once(api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    replies = await asyncio.gather(*(
        api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "burst"}) for _ in range(20)))
    fresh = [r for r in replies if r.status == 202 and REPLAYED not in r.headers]
    replayed = [r for r in replies if r.status == 202 and REPLAYED in r.headers]
    in_use = [r for r in replies if r.status == 409]
    assert len(fresh) == 1, replies
    assert len(fresh) + len(replayed) + len(in_use) == 20, replies
    assert all(r.body == fresh[0].body for r in replayed)
    assert all(r.body["error"] == "idempotency_key_in_use" and r.headers["Retry-After"] == "1" for r in in_use)
    assert [r["reference_id"] for r in await _spends(database_url, user)] == [fresh[0].body["id"]]
    assert await balance(api, user) == 20 and await _content_count(database_url, user) == 1
    # Whoever got 409 retries and gets the first answer.
    retry = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "burst"})
    assert retry.status == 202 and retry.headers[REPLAYED] == "true" and retry.body == fresh[0].body


async def test_concurrent_retries_of_a_finished_request_all_replay(api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    first = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "done"})
    assert first.status == 202
    retries = await asyncio.gather(*(
        api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "done"}) for _ in range(12)))
    assert [(r.status, r.headers.get(REPLAYED)) for r in retries] == [(202, "true")] * 12, retries
    assert all(r.body == first.body for r in retries)
    assert len(await _spends(database_url, user)) == 1


async def test_a_key_still_running_is_409_at_once_then_replays(api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    async with _CreditsLocked(database_url, user) as money:
        first = asyncio.create_task(api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "slow"}))
        await money.wait_for_waiters()  # the first request is inside its transaction, charging
        second = await asyncio.wait_for(
            api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "slow"}), 5)
        assert second.status == 409 and second.body["error"] == "idempotency_key_in_use"
        await money.release()
        done = await asyncio.wait_for(first, 10)
    assert done.status == 202 and REPLAYED not in done.headers
    third = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "slow"})
    assert third.status == 202 and third.headers[REPLAYED] == "true" and third.body == done.body
    assert len(await _spends(database_url, user)) == 1


async def test_same_key_with_another_body_or_route_is_422(api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    first = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "k"})
    assert first.status == 202
    for path, body in [(IMAGE, {**BODY, "prompt": "a different prompt"}),
                       (IMAGE, {**BODY, "quality": "hd"}),
                       ("/api/content/generate/video", BODY),
                       (f"/api/content/{first.body['id']}/retry", None)]:
        reply = await api.post(path, json=body, token=user.access_token, headers={KEY: "k"})
        assert reply.status == 422 and reply.body["error"] == "idempotency_key_reused", (path, reply)
        assert REPLAYED not in reply.headers
    assert len(await _spends(database_url, user)) == 1 and await balance(api, user) == 20


async def test_keys_belong_to_their_user(api: Api, worker, settings, database_url) -> None:
    alice = await verified_user(api, settings.data_dir / "outbox")
    bob = await verified_user(api, settings.data_dir / "outbox")
    a = await api.post(IMAGE, json=BODY, token=alice.access_token, headers={KEY: "shared"})
    b = await api.post(IMAGE, json=BODY, token=bob.access_token, headers={KEY: "shared"})
    assert a.status == b.status == 202 and REPLAYED not in a.headers and REPLAYED not in b.headers
    assert a.body["id"] != b.body["id"]
    assert len(await _spends(database_url, alice)) == len(await _spends(database_url, bob)) == 1
    # Bob's other body under the same key is no business of Alice's record.
    c = await api.post(IMAGE, json={**BODY, "prompt": "bob's own"}, token=bob.access_token, headers={KEY: "shared"})
    assert c.status == 422


async def test_key_length_is_1_to_255(api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    for bad in ("", "k" * 256):
        reply = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: bad})
        assert reply.status == 400 and reply.body["details"][0]["field"] == KEY, reply
    twice = await api.http.post(api.base_url + IMAGE, json=BODY, headers=CIMultiDict(
        [("Authorization", f"Bearer {user.access_token}"), (KEY, "a"), (KEY, "b")]))
    assert twice.status == 400
    assert await _spends(database_url, user) == [] and await _recorded(database_url, user) == []
    for good in ("k", "k" * 255):
        reply = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: good})
        assert reply.status == 202 and REPLAYED not in reply.headers
    assert await _recorded(database_url, user) == ["k", "k" * 255]


async def test_a_refusal_of_the_work_is_kept_and_replayed(api: Api, app_server, worker, settings,
                                                          database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    video = {"prompt": "a long premium video", "quality": "premium", "duration_seconds": 10}
    broke = await api.post("/api/content/generate/video", json=video, token=user.access_token,
                           headers={KEY: "v1"})
    assert broke.status == 402 and broke.body["error"] == "insufficient_credits"
    assert await _content_count(database_url, user) == 0  # the row the work inserted went with it
    async with transaction(app_server.app[keys.resources].sessionmaker) as session:
        await ledger.grant(session, user_id=uuid.UUID(user.id), amount=100, key=f"test:{user.id}")
    again = await api.post("/api/content/generate/video", json=video, token=user.access_token,
                           headers={KEY: "v1"})
    assert again.status == 402 and again.headers[REPLAYED] == "true" and again.body == broke.body
    fresh = await api.post("/api/content/generate/video", json=video, token=user.access_token,
                           headers={KEY: "v2"})
    assert fresh.status == 202 and len(await _spends(database_url, user)) == 1
    # A validation failure never reached the work: not kept, the key stays free.
    invalid = await api.post(IMAGE, json={"prompt": ""}, token=user.access_token, headers={KEY: "v3"})
    assert invalid.status == 400 and "v3" not in await _recorded(database_url, user)


async def test_an_answer_that_cannot_be_written_undoes_the_work(api: Api, worker, settings, database_url,
                                                                monkeypatch) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")

    def unwritable(value):
        raise TypeError("cannot encode the answer")

    monkeypatch.setattr(idempotency, "dumps", unwritable)
    failed = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "enc"})
    assert failed.status == 500
    # The charge, the content and the record were one transaction: none of them is left.
    assert await _spends(database_url, user) == [] and await _content_count(database_url, user) == 0
    assert await _recorded(database_url, user) == [] and await balance(api, user) == 25
    monkeypatch.undo()
    retry = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "enc"})
    assert retry.status == 202 and REPLAYED not in retry.headers
    assert len(await _spends(database_url, user)) == 1


async def test_a_server_killed_mid_request_neither_charges_nor_locks_the_key(
        api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    async with ServerProcess(settings) as doomed, _CreditsLocked(database_url, user) as money:
        client = Api(doomed.url)
        try:
            lost = asyncio.create_task(client.post(IMAGE, json=BODY, token=user.access_token,
                                                   headers={KEY: "crash"}))
            await money.wait_for_waiters()  # content inserted, charge waiting: mid-transaction
            doomed.proc.kill()
            with pytest.raises(aiohttp.ClientError):
                await lost
        finally:
            await client.close()
        # The dead server's transaction is still open (its backend waits on our lock) ...
        held = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "crash"})
        assert held.status == 409 and held.body["error"] == "idempotency_key_in_use"
        await money.release()  # ... and ends with its connection: rolled back, key free
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        retry = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "crash"})
        if retry.status != 409 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert retry.status == 202 and REPLAYED not in retry.headers, retry
    assert [r["reference_id"] for r in await _spends(database_url, user)] == [retry.body["id"]]
    assert await _content_count(database_url, user) == 1 and await balance(api, user) == 20


async def test_socket_request_id_is_the_idempotency_key(api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    client = SocketClient()
    await client.connect(api.base_url, token=user.access_token)
    try:
        first = await client.call("content.generate", {"kind": "image", "request_id": "s1", **BODY})
        assert first["ok"] is True, first
        again = await client.call("content.generate", {"kind": "image", "request_id": "s1", **BODY})
        assert again == first  # the first ack again
        other = await client.call("content.generate", {"kind": "image", "request_id": "s1",
                                                       "prompt": "not the same"})
        assert other["ok"] is False and other["error"]["error"] == "idempotency_key_reused"
        for bad in ("", "r" * 256, 7):
            refused = await client.call("content.generate", {"kind": "image", "request_id": bad, **BODY})
            assert refused["ok"] is False and refused["error"]["details"][0]["field"] == "request_id", refused
        # A refusal is kept too: the second ack is the first one's.
        video = {"kind": "video", "request_id": "s2", "prompt": "long", "quality": "premium",
                 "duration_seconds": 10}
        broke = await client.call("content.generate", video)
        assert broke["ok"] is False and broke["error"]["error"] == "insufficient_credits"
        assert await client.call("content.generate", video) == broke
        # The socket's key answers over REST too, as the first response.
        rest = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "s1"})
        assert rest.status == 202 and rest.headers[REPLAYED] == "true" and rest.body == first["data"]
        rest_broke = await api.post("/api/content/generate/video", token=user.access_token, headers={KEY: "s2"},
                                    json={k: v for k, v in video.items() if k not in ("kind", "request_id")})
        assert rest_broke.status == 402 and rest_broke.body == broke["error"]
    finally:
        await client.close()
    assert [r["reference_id"] for r in await _spends(database_url, user)] == [first["data"]["id"]]


async def test_a_rest_request_retried_over_the_socket_is_answered_once(api: Api, worker, settings,
                                                                       database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    rest = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "r1"})
    assert rest.status == 202
    client = SocketClient()
    await client.connect(api.base_url, token=user.access_token)
    try:
        ack = await client.call("content.generate", {"kind": "image", "request_id": "r1", **BODY})
        assert ack == {"ok": True, "data": rest.body}
        video = await client.call("content.generate", {"kind": "video", "request_id": "r1", **BODY})
        assert video["ok"] is False and video["error"]["error"] == "idempotency_key_reused"
    finally:
        await client.close()
    assert len(await _spends(database_url, user)) == 1 and await balance(api, user) == 20


async def test_billing_posts_replay_too(api: Api, database_url, worker, settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    pack = [await api.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_500"},
                           token=user.access_token, headers={KEY: "pack"}) for _ in range(2)]
    assert [p.status for p in pack] == [201, 201] and pack[1].headers[REPLAYED] == "true"
    assert pack[1].body == pack[0].body and await balance(api, user) == 525
    subscribe = [await api.post("/api/subscriptions", json={"plan_id": "starter"}, token=user.access_token,
                                headers={KEY: "sub"}) for _ in range(2)]
    assert [s.status for s in subscribe] == [201, 201] and subscribe[1].body == subscribe[0].body
    assert subscribe[1].headers[REPLAYED] == "true" and await balance(api, user) == 625


async def test_old_keys_are_forgotten_by_the_cron_job(api: Api, app_server, worker, settings,
                                                      database_url) -> None:
    from jobs.idempotency import prune_idempotency_keys
    from jobs.worker import cron_jobs

    assert "prune_idempotency_keys" in [job.name for job in cron_jobs(settings)]
    user = await verified_user(api, settings.data_dir / "outbox")
    for key in ("old", "recent"):
        assert (await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: key})).status == 202
    await _rows(database_url, "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                              "WHERE user_id = $1 AND key = 'old'", uuid.UUID(user.id))
    await _rows(database_url, "UPDATE idempotency_keys SET created_at = now() - interval '23 hours' "
                              "WHERE user_id = $1 AND key = 'recent'", uuid.UUID(user.id))
    assert await prune_idempotency_keys({"res": app_server.app[keys.resources]}) >= 1
    assert await _recorded(database_url, user) == ["recent"]
    kept = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "recent"})
    assert kept.status == 202 and kept.headers[REPLAYED] == "true"
    reused = await api.post(IMAGE, json=BODY, token=user.access_token, headers={KEY: "old"})
    assert reused.status == 202 and REPLAYED not in reused.headers  # a new request after retention
    assert len(await _spends(database_url, user)) == 3


async def test_recording_rules_for_the_works_own_outcomes(api: Api, app_server, database_url) -> None:
    """Stripe's rules, straight on run(): a 4xx of the work is kept (its changes and after-commit
    hooks undone), a 429 or a 5xx is not (the whole transaction rolls back)."""
    res = app_server.app[keys.resources]
    user = await api.register()
    user_id = uuid.UUID(user.id)
    ran: list[str] = []

    async def attempt(key: str, exc: Exception) -> idempotency.Outcome:
        async with transaction(res.sessionmaker) as session:
            async def work() -> None:
                ran.append(type(exc).__name__)
                await record_activity(session, user_id=user_id, type="test.work", message="half done")
                after_commit(session, lambda: _note(ran, "hook"))
                raise exc

            return await idempotency.run(session, user_id=user_id, key=key, status=202, work=work,
                                         fingerprint=idempotency.fingerprint("POST /t", None))

    kept = await attempt("conflict", Conflict("no"))
    assert (kept.status, kept.replayed) == (409, False)
    again = await attempt("conflict", Conflict("never runs"))
    assert again.replayed and again.body == kept.body and ran == ["Conflict"]
    for key, exc in [("busy", RateLimited()), ("down", ServiceUnavailable())]:
        with pytest.raises(type(exc)):
            await attempt(key, exc)
        with pytest.raises(type(exc)):
            await attempt(key, exc)  # nothing was kept: the work runs again
    assert ran == ["Conflict", "RateLimited", "RateLimited", "ServiceUnavailable", "ServiceUnavailable"]
    assert await _recorded(database_url, user) == ["conflict"]
    assert await _rows(database_url, "SELECT 1 FROM activity_events WHERE user_id = $1 AND type = 'test.work'",
                       user_id) == []
    assert "hook" not in ran  # the refused work's after-commit hook went with it


async def _note(into: list[str], what: str) -> None:
    into.append(what)


async def test_openapi_lists_the_header_and_its_statuses(api: Api) -> None:
    doc = (await api.get("/openapi.json")).body
    generate = doc["paths"][IMAGE]["post"]
    assert any(p["name"] == KEY and p["in"] == "header" and p["schema"]["maxLength"] == 255
               for p in generate["parameters"])
    assert {"409", "422"} <= set(generate["responses"]) and REPLAYED in generate["responses"]["202"]["headers"]
    for path in ("/api/avatars", "/api/avatars/{avatar_id}/regenerate-thumbnail", "/api/content/{content_id}/retry",
                 "/api/subscriptions", "/api/subscriptions/payment-intent", "/api/content/generate/video"):
        assert any(p["name"] == KEY for p in doc["paths"][path]["post"]["parameters"]), path
    assert not any(p["name"] == KEY for p in doc["paths"]["/api/content/{content_id}/cancel"]["post"]["parameters"])


async def test_a_write_waiting_in_its_transaction_holds_no_read_connection(settings, database_url) -> None:
    """Pool size 1: while a write waits inside its transaction, reads (auth included) go on."""
    small = settings.model_copy(update={"db_pool_size": 1})
    server = await start_app(small)
    client = Api(str(server.make_url("")).rstrip("/"))
    image = {"prompt": "waits for the lock"}
    try:
        async with running_worker(small):
            user = await verified_user(client, small.data_dir / "outbox")
        async with _CreditsLocked(database_url, user) as money:
            buying = asyncio.create_task(client.post(IMAGE, json=image, token=user.access_token))
            await money.wait_for_waiters()
            listed = await asyncio.wait_for(client.get("/api/avatars", token=user.access_token), 5)
            assert listed.status == 200
            writes = [client.post(IMAGE, json=image, token=user.access_token) for _ in range(3)]
            more = asyncio.gather(*writes)
            await money.wait_for_waiters(2)  # a second write is in its transaction too (overflow)
            assert (await asyncio.wait_for(client.get("/api/avatars", token=user.access_token), 5)).status == 200
            await money.release()
            assert (await asyncio.wait_for(buying, 10)).status == 202
            assert [r.status for r in await asyncio.wait_for(more, 20)] == [202, 202, 202]
        assert await balance(client, user) == 25 - 4 * 5
    finally:
        await client.close()
        await server.close()
