"""Avatars over HTTP with a real worker: create, ready with a real JPEG, limits, money, ownership."""

from __future__ import annotations

import asyncio
import io
import uuid
from urllib.parse import urlsplit

import aiohttp
import pytest
from PIL import Image
from pydantic import SecretStr
from sqlalchemy import insert, select, text, update

from db.models import Avatar, CreditTransaction, GeneratedContent
from db.session import transaction
from server import keys
from server.credits import ledger
from tests.conftest import start_app
from tests.support.api import Api, verified_user
from tests.support.events import history
from tests.support.fake_xai import FakeXai
from tests.support.flows import wait_for_avatar
from tests.support.s3 import PresignGate, create_bucket, moto_s3, s3_settings
from tests.support.workers import running_worker

NEW = {"name": "Mara", "age": 27, "description": "A travelling photographer", "style": "streetwear",
       "appearance": {"hair": "teal", "height_cm": 170}, "personality": "curious"}


def outbox(settings):
    return settings.data_dir / "outbox"


async def wait_until(check, *, timeout: float = 15.0, every: float = 0.05):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)


async def balance(api: Api, user) -> int:
    reply = await api.get("/api/auth/profile", token=user.access_token)
    return reply.body["credits"]["balance"]


async def ledger_rows(app, user_id: str) -> list:
    async with transaction(app[keys.resources].sessionmaker) as session:
        rows = await session.execute(select(CreditTransaction.type, CreditTransaction.amount,
                                            CreditTransaction.idempotency_key)
                                     .where(CreditTransaction.user_id == uuid.UUID(user_id))
                                     .order_by(CreditTransaction.created_at))
        return [tuple(r) for r in rows]


async def fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.read()


async def test_verified_user_creates_an_avatar_that_becomes_ready_with_a_real_thumbnail(
        api, app_server, worker, settings) -> None:
    user = await verified_user(api, outbox(settings))
    reply = await api.post("/api/avatars", json=NEW, token=user.access_token)
    assert reply.status == 202, reply
    created = reply.body
    assert created["status"] == "creating" and created["thumbnail_url"] is None
    assert created["name"] == "Mara" and created["age"] == 27 and created["content_count"] == 0
    assert created["appearance"] == {"hair": "teal", "height_cm": 170}
    assert await balance(api, user) == 15

    ready = await wait_for_avatar(api, user, created["id"])
    assert ready["status"] == "ready", ready
    assert ready["profile"]["identity"].startswith("Mara, a 27-year-old adult with teal hair")
    parts = urlsplit(ready["thumbnail_url"])
    image = await api.request("GET", f"{parts.path}?{parts.query}")
    assert image.status == 200 and image.headers["Content-Type"] == "image/jpeg"
    raw = await app_server.app[keys.resources].storage.get(f"avatars/{user.id}/thumbnail_{created['id']}.jpg")
    assert Image.open(io.BytesIO(raw)).format == "JPEG" and Image.open(io.BytesIO(raw)).size == (512, 512)

    assert await balance(api, user) == 15
    spends = [r for r in await ledger_rows(app_server.app, user.id) if r[0] == "spend"]
    assert spends == [("spend", -10, f"avatar:{created['id']}:charge")]

    res = app_server.app[keys.resources]

    async def published():
        events = await history(res, user.id)
        return events if any(p.get("activity", {}).get("type") == "avatar.ready" for _, p in events) else None
    events = await wait_until(published)
    updates = [payload for name, payload in events if name == "avatar.updated"]
    assert updates and updates[-1]["avatar"]["status"] == "ready"
    assert updates[-1]["avatar"]["thumbnail_url"].startswith("http")
    activities = [payload["activity"]["type"] for name, payload in events if name == "activity"]
    assert "avatar.created" in activities and "avatar.ready" in activities


async def test_the_job_is_safe_to_run_again(api, app_server, worker, settings) -> None:
    from jobs.avatars import make_avatar

    user = await verified_user(api, outbox(settings))
    created = (await api.post("/api/avatars", json=NEW, token=user.access_token)).body
    ready = await wait_for_avatar(api, user, created["id"])
    before = await ledger_rows(app_server.app, user.id)
    await make_avatar({"res": app_server.app[keys.resources], "job_try": 1}, avatar_id=created["id"])
    again = (await api.get(f"/api/avatars/{created['id']}", token=user.access_token)).body
    assert again["updated_at"] == ready["updated_at"] and again["profile"] == ready["profile"]
    assert await ledger_rows(app_server.app, user.id) == before


async def test_unverified_users_cannot_create(api) -> None:
    user = await api.register()
    reply = await api.post("/api/avatars", json=NEW, token=user.access_token)
    assert reply.status == 403 and reply.body["error"] == "email_not_verified"
    assert (await api.get("/api/avatars", token=user.access_token)).body["total"] == 0
    assert await balance(api, user) == 25


@pytest.mark.parametrize(("body", "field"), [
    ({**NEW, "age": 17}, "age"),
    ({**NEW, "name": "  "}, "name"),
    ({**NEW, "owner": "someone"}, "owner"),
    ({k: v for k, v in NEW.items() if k != "age"}, "age"),
    ({**NEW, "appearance": {"hair": "x" * 300}}, "appearance"),
])
async def test_invalid_bodies_are_400_and_change_nothing(api, worker, settings, body, field) -> None:
    user = await verified_user(api, outbox(settings))
    reply = await api.post("/api/avatars", json=body, token=user.access_token)
    assert reply.status == 400 and reply.body["error"] == "validation_error"
    assert any(d["field"].startswith(field) for d in reply.body["details"]), reply.body
    assert await balance(api, user) == 25


@pytest.mark.parametrize("changes", [
    {"description": "she is a 16 year old schoolgirl"},
    {"description": "looks like a t-e-e-n"},
    {"name": "Taylor Swift"},
    {"appearance": {"body": "childlike, l0li"}},
])
async def test_policy_refusals_are_422_and_charge_nothing(api, app_server, worker, settings, changes, caplog) -> None:
    user = await verified_user(api, outbox(settings))
    reply = await api.post("/api/avatars", json={**NEW, **changes}, token=user.access_token)
    assert reply.status == 422 and reply.body["error"] == "content_policy_violation", reply
    assert await balance(api, user) == 25
    assert (await api.get("/api/avatars", token=user.access_token)).body["total"] == 0
    assert [r for r in await ledger_rows(app_server.app, user.id) if r[0] == "spend"] == []
    refusal = [r for r in caplog.records if getattr(r, "event", None) == "content_policy_refusal"]
    assert refusal and refusal[-1].user_id == user.id


async def test_free_plan_allows_one_avatar_even_under_concurrency(api, app_server, worker, settings) -> None:
    user = await verified_user(api, outbox(settings))
    replies = await asyncio.gather(*[api.post("/api/avatars", json={**NEW, "name": f"M{i}"},
                                              token=user.access_token) for i in range(5)])
    assert sorted(r.status for r in replies) == [202, 403, 403, 403, 403], replies
    assert {r.body["error"] for r in replies if r.status == 403} == {"avatar_limit_reached"}
    assert await balance(api, user) == 15
    limit = await api.get("/api/avatars/limit", token=user.access_token)
    assert limit.body == {"used": 1, "limit": 1, "remaining": 0, "plan_id": "free"}


async def test_402_when_credits_are_short_and_nothing_is_written(api, app_server, worker, settings) -> None:
    user = await verified_user(api, outbox(settings))
    async with transaction(app_server.app[keys.resources].sessionmaker) as session:
        await ledger.spend(session, user_id=uuid.UUID(user.id), amount=20, key=f"test:{user.id}:drain")
    reply = await api.post("/api/avatars", json=NEW, token=user.access_token)
    assert reply.status == 402 and reply.body["error"] == "insufficient_credits"
    assert reply.body["details"] == [{"required": 10, "balance": 5}]
    assert (await api.get("/api/avatars", token=user.access_token)).body["total"] == 0
    assert await balance(api, user) == 5


async def test_other_users_avatars_are_404_everywhere(api, worker, settings) -> None:
    alice = await verified_user(api, outbox(settings))
    bob = await verified_user(api, outbox(settings))
    avatar = (await api.post("/api/avatars", json=NEW, token=alice.access_token)).body
    await wait_for_avatar(api, alice, avatar["id"])
    path = f"/api/avatars/{avatar['id']}"
    assert (await api.get(path, token=bob.access_token)).status == 404
    assert (await api.put(path, json={"name": "Mine"}, token=bob.access_token)).status == 404
    assert (await api.delete(path, token=bob.access_token)).status == 404
    assert (await api.post(path + "/regenerate-thumbnail", token=bob.access_token)).status == 404
    assert (await api.get("/api/avatars/not-a-uuid", token=bob.access_token)).status == 404
    assert (await api.get("/api/avatars", token=bob.access_token)).body["total"] == 0
    assert (await api.get(path, token=alice.access_token)).body["name"] == "Mara"
    assert await balance(api, bob) == 25
    assert (await api.get("/api/avatars")).status == 401


async def _insert_avatars(app, user_id: str, names: list[str]) -> None:
    async with transaction(app[keys.resources].sessionmaker) as session:
        for i, name in enumerate(names):
            await session.execute(insert(Avatar).values(
                user_id=uuid.UUID(user_id), name=name, age=30, seed=i, status="ready",
                description=f"{name} likes {'jazz' if i % 3 == 0 else 'hiking'}",
                created_at=text(f"now() - interval '{len(names) - i} minutes'")))


async def test_search_and_pagination(api, app_server) -> None:
    user = await api.register()
    await _insert_avatars(app_server.app, user.id, [f"Avatar {i:02d}" for i in range(25)] + ["100%_real"])
    first = (await api.get("/api/avatars?page=1&limit=10", token=user.access_token)).body
    assert first["total"] == 26 and first["page"] == 1 and first["limit"] == 10
    assert [a["name"] for a in first["items"]][:2] == ["100%_real", "Avatar 24"]  # newest first
    third = (await api.get("/api/avatars?page=3&limit=10", token=user.access_token)).body
    assert len(third["items"]) == 6 and third["total"] == 26
    beyond = (await api.get("/api/avatars?page=9&limit=10", token=user.access_token)).body
    assert beyond["items"] == [] and beyond["total"] == 26
    jazz = (await api.get("/api/avatars?search=JAZZ&limit=100", token=user.access_token)).body
    assert jazz["total"] == 9 and all("jazz" in a["description"] for a in jazz["items"])
    by_name = (await api.get("/api/avatars?search=avatar%2007", token=user.access_token)).body
    assert [a["name"] for a in by_name["items"]] == ["Avatar 07"]
    literal = (await api.get("/api/avatars?search=%25_", token=user.access_token)).body
    assert [a["name"] for a in literal["items"]] == ["100%_real"]  # % and _ are matched literally
    for bad in ("limit=0", "limit=101", "page=0", "page=x"):
        reply = await api.get(f"/api/avatars?{bad}", token=user.access_token)
        assert reply.status == 400 and reply.body["error"] == "validation_error", bad
    stats = (await api.get("/api/avatars/stats", token=user.access_token)).body
    assert stats["total"] == 26 and stats["by_status"] == {"creating": 0, "ready": 26, "failed": 0}
    assert stats["limit"] == {"used": 26, "limit": 1, "remaining": 0, "plan_id": "free"}


async def test_update_and_delete_remove_files_and_keep_content(api, app_server, worker, settings) -> None:
    user = await verified_user(api, outbox(settings))
    avatar = (await api.post("/api/avatars", json=NEW, token=user.access_token)).body
    ready = await wait_for_avatar(api, user, avatar["id"])
    path = f"/api/avatars/{avatar['id']}"
    updated = await api.put(path, json={"name": "Mara B", "appearance": {"hair": "black"}}, token=user.access_token)
    assert updated.status == 200 and updated.body["name"] == "Mara B"
    assert updated.body["appearance"] == {"hair": "black"} and updated.body["profile"] == ready["profile"]
    assert (await api.put(path, json={}, token=user.access_token)).status == 400
    assert (await api.put(path, json={"age": 16}, token=user.access_token)).status == 400
    refused = await api.put(path, json={"description": "now a little girl"}, token=user.access_token)
    assert refused.status == 422

    res = app_server.app[keys.resources]
    async with transaction(res.sessionmaker) as session:
        content_id = (await session.execute(insert(GeneratedContent).values(
            user_id=uuid.UUID(user.id), avatar_id=uuid.UUID(avatar["id"]), type="image", prompt="x",
            credits_cost=5, status="completed").returning(GeneratedContent.id))).scalar_one()
    assert (await api.get(path, token=user.access_token)).body["content_count"] == 1
    key = f"avatars/{user.id}/thumbnail_{avatar['id']}.jpg"
    thumb = urlsplit(ready["thumbnail_url"])
    assert (await api.get(f"{thumb.path}?{thumb.query}")).status == 200

    assert (await api.delete(path, token=user.access_token)).status == 204
    assert (await api.get(path, token=user.access_token)).status == 404
    assert (await api.delete(path, token=user.access_token)).status == 404
    assert (await api.get(f"{thumb.path}?{thumb.query}")).status == 404
    assert not (settings.data_dir / "files" / key).exists()
    async with transaction(res.sessionmaker) as session:
        kept = (await session.execute(select(GeneratedContent.avatar_id).where(GeneratedContent.id == content_id))).one()
    assert kept.avatar_id is None
    assert await balance(api, user) == 15  # a ready avatar is not refunded on delete
    again = await api.post("/api/avatars", json=NEW, token=user.access_token)
    assert again.status == 202  # the slot is free again


async def test_regenerate_thumbnail_charges_5_and_replaces_the_image(api, app_server, worker, settings) -> None:
    user = await verified_user(api, outbox(settings))
    avatar = (await api.post("/api/avatars", json=NEW, token=user.access_token)).body
    await wait_for_avatar(api, user, avatar["id"])
    storage = app_server.app[keys.resources].storage
    key = f"avatars/{user.id}/thumbnail_{avatar['id']}.jpg"
    old = await storage.get(key)
    path = f"/api/avatars/{avatar['id']}/regenerate-thumbnail"
    first = await api.post(path, token=user.access_token, headers={"Idempotency-Key": "k1"})
    repeat = await api.post(path, token=user.access_token, headers={"Idempotency-Key": "k1"})
    assert first.status == 202 and repeat.status == 202 and first.body["status"] == "ready"
    assert await balance(api, user) == 10  # the retried request was charged once
    await wait_until(lambda: _changed(storage, key, old))
    spends = [r for r in await ledger_rows(app_server.app, user.id) if r[0] == "spend"]
    assert [s[1] for s in spends] == [-10, -5] and ":thumbnail:" in spends[1][2]


async def test_deleting_an_avatar_before_its_new_thumbnail_is_made_refunds_that_thumbnail(
        api, app_server, settings) -> None:
    async with running_worker(settings):
        user = await verified_user(api, outbox(settings))
        avatar = (await api.post("/api/avatars", json=NEW, token=user.access_token)).body
        await wait_for_avatar(api, user, avatar["id"])
    regenerated = await api.post(f"/api/avatars/{avatar['id']}/regenerate-thumbnail", token=user.access_token)
    assert regenerated.status == 202 and await balance(api, user) == 10
    assert (await api.delete(f"/api/avatars/{avatar['id']}", token=user.access_token)).status == 204
    async with running_worker(settings):  # the thumbnail job runs only now, on a deleted avatar
        assert await wait_until(lambda: _balance_is(api, user, 15))
    kinds = [r[0] for r in await ledger_rows(app_server.app, user.id)]
    assert kinds.count("refund") == 1


async def _balance_is(api, user, expected: int) -> bool:
    return await balance(api, user) == expected


async def _changed(storage, key, old):
    return await storage.get(key) != old


async def test_regenerate_needs_a_ready_avatar(api, app_server) -> None:
    user = await api.register()
    await _insert_avatars(app_server.app, user.id, ["Old"])
    avatar = (await api.get("/api/avatars", token=user.access_token)).body["items"][0]
    reply = await api.post(f"/api/avatars/{avatar['id']}/regenerate-thumbnail", token=user.access_token)
    assert reply.status == 403 and reply.body["error"] == "email_not_verified"


# --- the grok provider failing for real, and the grok + S3 story -------------------------------

def grok(settings, xai: FakeXai):
    return settings.model_copy(update={"grok_api_key": SecretStr(xai.api_key), "grok_base_url": xai.base_url,
                                       "grok_timeout_seconds": 5.0})


async def test_a_permanent_provider_error_fails_the_avatar_and_refunds_once(settings, xai) -> None:
    configured = grok(settings, xai)
    xai.fail("POST /v1/images/generations", 400, times=5, error="Image rejected by content moderation")
    server = await start_app(configured)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        async with running_worker(configured):
            user = await verified_user(api, outbox(configured))
            avatar = (await api.post("/api/avatars", json=NEW, token=user.access_token)).body
            failed = await wait_for_avatar(api, user, avatar["id"])
            assert failed["status"] == "failed"
            assert "Image rejected by content moderation" in failed["error"]
            assert failed["profile"]["provider"] == "grok"  # the chat call worked, the image call did not
            assert await balance(api, user) == 25
            from jobs.avatars import make_avatar
            res = server.app[keys.resources]
            await make_avatar({"res": res, "job_try": 4}, avatar_id=avatar["id"])  # a rerun refunds nothing more
            from jobs.avatars import _give_up
            await _give_up(res, uuid.UUID(avatar["id"]), None, "again")
            rows = await ledger_rows(server.app, user.id)
            assert [r[:2] for r in rows if r[0] in ("spend", "refund")] == [("spend", -10), ("refund", 10)]
            assert await balance(api, user) == 25
            assert len(xai.calls("POST /v1/images/generations")) == 1  # permanent: not retried
            async def failed_event():
                events = await history(res, user.id)
                return [p["avatar"]["status"] for n, p in events if n == "avatar.updated"]
            assert await wait_until(failed_event) == ["failed"]
    finally:
        await api.close()
        await server.close()


async def test_grok_and_s3_story(settings, xai) -> None:
    with moto_s3() as moto:
        gate = await PresignGate(moto).start()
        configured = s3_settings(grok(settings, xai), gate.url)
        create_bucket(moto, configured.aws_s3_bucket)
        xai.fail("POST /v1/images/generations", 429, error="slow down", headers={"Retry-After": "0"})
        server = await start_app(configured)
        api = Api(str(server.make_url("")).rstrip("/"))
        try:
            async with running_worker(configured):
                user = await verified_user(api, outbox(configured))
                avatar = (await api.post("/api/avatars", json=NEW, token=user.access_token)).body
                ready = await wait_for_avatar(api, user, avatar["id"])
                assert ready["status"] == "ready", ready
                assert ready["profile"]["identity"].startswith("Mara, a 27-year-old adult")
                assert ready["thumbnail_url"].startswith(gate.url) and "X-Amz-Signature=" in ready["thumbnail_url"]
                status, body = await fetch(ready["thumbnail_url"])
                assert status == 200 and Image.open(io.BytesIO(body)).format == "JPEG"
                image_call = xai.calls("POST /v1/images/generations")[-1]
                assert image_call.body["prompt"].startswith(ready["profile"]["identity"])
                assert len(xai.calls("POST /v1/images/generations")) == 2  # 429, then success
                assert await balance(api, user) == 15
                assert (await api.delete(f"/api/avatars/{avatar['id']}", token=user.access_token)).status == 204
                status, _ = await fetch(ready["thumbnail_url"])
                assert status == 404  # the object is gone from the bucket
        finally:
            await api.close()
            await server.close()
            await gate.close()


async def test_sweep_requeues_avatars_whose_job_was_lost(api, app_server, worker, settings) -> None:
    from jobs.avatars import sweep_avatars

    user = await verified_user(api, outbox(settings))
    res = app_server.app[keys.resources]
    avatar_id = uuid.uuid4()
    async with transaction(res.sessionmaker) as session:
        await session.execute(insert(Avatar).values(id=avatar_id, user_id=uuid.UUID(user.id), name="Lost", age=40,
                                                    seed=9, status="creating",
                                                    updated_at=text("now() - interval '15 minutes'")))
        await ledger.spend(session, user_id=uuid.UUID(user.id), amount=10, key=f"avatar:{avatar_id}:charge")
    assert await sweep_avatars({"res": res}) >= 1
    ready = await wait_for_avatar(api, user, str(avatar_id))
    assert ready["status"] == "ready"
    async with transaction(res.sessionmaker) as session:
        await session.execute(insert(Avatar).values(id=(hopeless := uuid.uuid4()), user_id=uuid.UUID(user.id),
                                                    name="Ancient", age=40, seed=9, status="creating",
                                                    updated_at=text("now() - interval '2 hours'")))
        await ledger.spend(session, user_id=uuid.UUID(user.id), amount=5, key=f"avatar:{hopeless}:charge")
    await sweep_avatars({"res": res})
    failed = (await api.get(f"/api/avatars/{hopeless}", token=user.access_token)).body
    assert failed["status"] == "failed" and failed["error"] == "The avatar took too long to create"
    assert await balance(api, user) == 15  # 25 - 10 (Lost, now ready) - 5 + 5 (Ancient, refunded)


async def test_a_paid_thumbnail_whose_job_was_lost_is_made_by_the_sweep(api, app_server, worker, settings) -> None:
    """Charged, but the enqueue after commit never happened (Redis lost it): the sweep finds it."""
    from jobs.avatars import sweep_avatars

    user = await verified_user(api, outbox(settings))
    created = await api.post("/api/avatars", token=user.access_token, json={"name": "Nova", "age": 33})
    ready = await wait_for_avatar(api, user, created.body["id"])
    res = app_server.app[keys.resources]
    regeneration_id = uuid.uuid4()
    async with transaction(res.sessionmaker) as session:  # what regenerate-thumbnail commits, minus the job
        await ledger.spend(session, user_id=uuid.UUID(user.id), amount=5,
                           key=f"avatar:{ready['id']}:thumbnail:{regeneration_id}:charge")
        await session.execute(update(Avatar).where(Avatar.id == uuid.UUID(ready["id"])).values(
            regeneration_id=regeneration_id, updated_at=text("now() - interval '15 minutes'")))
    again = await api.post(f"/api/avatars/{ready['id']}/regenerate-thumbnail", token=user.access_token)
    assert again.status == 409  # one new thumbnail at a time, and this one is already paid for
    assert await sweep_avatars({"res": res}) >= 1
    for _ in range(200):
        async with res.sessionmaker() as session:
            pending = (await session.execute(select(Avatar.regeneration_id).where(
                Avatar.id == uuid.UUID(ready["id"])))).scalar_one()
        if pending is None:
            break
        await asyncio.sleep(0.05)
    assert pending is None
    after = (await api.get(f"/api/avatars/{ready['id']}", token=user.access_token)).body
    assert after["status"] == "ready" and after["updated_at"] != ready["updated_at"]
    assert await balance(api, user) == 25 - 10 - 5  # charged once, not refunded


async def test_a_failed_avatar_holds_no_plan_slot(api, app_server, worker, settings) -> None:
    user = await verified_user(api, outbox(settings))
    res = app_server.app[keys.resources]
    async with transaction(res.sessionmaker) as session:
        await session.execute(insert(Avatar).values(user_id=uuid.UUID(user.id), name="Broken", age=40, seed=1,
                                                    status="failed", error="provider said no"))
    limit = (await api.get("/api/avatars/limit", token=user.access_token)).body
    assert limit["used"] == 0 and limit["remaining"] == 1  # the free plan's one avatar is still free
    created = await api.post("/api/avatars", token=user.access_token, json={"name": "Second try", "age": 30})
    assert created.status == 202, created
