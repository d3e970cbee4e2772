"""Content generation end to end: HTTP, a real arq worker, the local provider, the ledger."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from PIL import Image

from server import keys
from tests.conftest import _asyncpg_dsn
from tests.support.api import Api, User, verified_user
from tests.support.events import history
from tests.support.flows import balance, wait_for_content
from tests.support.workers import running_worker


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def _download(api: Api, url: str) -> bytes:
    async with api.http.get(api.base_url + _path(url)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def _ledger(database_url: str, user_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        return await conn.fetch(
            "SELECT amount, type, idempotency_key FROM credit_transactions WHERE user_id = $1 ORDER BY created_at, id",
            uuid.UUID(user_id))
    finally:
        await conn.close()


def _files_of(data_dir: Path, content_id: str) -> list[Path]:
    return list((data_dir / "files").rglob(f"*{content_id}*"))


async def test_image_story_progress_completion_file_and_one_charge(api: Api, worker, settings, app_server,
                                                                   sockets) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    client = sockets()
    await client.connect(str(app_server.make_url("")).rstrip("/"), token=user.access_token)
    queued = await api.post("/api/content/generate/image", token=user.access_token,
                            json={"prompt": "a lighthouse in a storm", "quality": "hd", "aspect_ratio": "16:9"})
    assert queued.status == 202, queued
    assert queued.body["status"] == "queued" and queued.body["credits_cost"] == 8  # ceil(5 x 1.5)
    assert await balance(api, user) == 25 - 8
    done = await wait_for_content(api, user, queued.body["id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["attempts"] == 1
    assert done["enhanced_prompt"] and "lighthouse" in done["enhanced_prompt"]
    image = Image.open(io.BytesIO(await _download(api, done["url"])))
    assert image.format == "JPEG" and image.size == (1024, 576)
    assert Image.open(io.BytesIO(await _download(api, done["thumbnail_url"]))).format == "JPEG"
    assert await balance(api, user) == 25 - 8  # charged once, never refunded

    events = await history(app_server.app[keys.resources], user.id)
    mine = [(name, p) for name, p in events if p.get("content_id") == done["id"]
            or p.get("content", {}).get("id") == done["id"]]
    names = [name for name, _ in mine]
    assert names == ["generation.completed"]  # progress ticks are live only, never stored
    completed = mine[-1][1]["content"]
    assert completed["url"] and completed["status"] == "completed"
    assert [p["event_id"] for _, p in events] == list(range(1, len(events) + 1))
    # Live: progress ticks in order, then the durable completion.
    await client.wait_for("generation.completed", 1)
    live = [p for name, p in client.events if name == "generation.progress" and p["content_id"] == done["id"]]
    progress = [p["progress"] for p in live]
    assert progress == sorted(progress) and len(progress) >= 3
    stages = [p["stage"] for p in live]
    assert stages[0] == "starting" and "generating" in stages and stages[-1] == "storing"
    assert all(isinstance(p["event_id"], int) for p in live)

    listing = await api.get("/api/content?type=image&status=completed", token=user.access_token)
    assert listing.body["total"] == 1 and listing.body["items"][0]["id"] == done["id"]
    stats = await api.get("/api/content/stats", token=user.access_token)
    assert stats.body["total"] == 1 and stats.body["by_type"]["image"] == 1
    assert stats.body["by_status"]["completed"] == 1 and stats.body["credits_spent"] == 8
    for _ in range(50):  # the job counts its outcome just after the row is final
        metrics = await api.get("/metrics")
        if 'generation_jobs_total{kind="image",outcome="completed"} 1' in metrics.body:
            break
        await asyncio.sleep(0.05)
    assert 'generation_jobs_total{kind="image",outcome="completed"} 1' in metrics.body


async def test_video_animates_an_own_completed_image(api: Api, worker, settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    image = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "a red fox"})
    image_done = await wait_for_content(api, user, image.body["id"])
    video = await api.post("/api/content/generate/video", token=user.access_token, json={
        "prompt": "the fox turns its head", "duration_seconds": 1, "source_content_id": image_done["id"]})
    assert video.status == 202 and video.body["credits_cost"] == 15
    done = await wait_for_content(api, user, video.body["id"])
    assert done["status"] == "completed", done
    assert (await _download(api, done["url"]))[4:8] == b"ftyp"
    assert Image.open(io.BytesIO(await _download(api, done["thumbnail_url"]))).format == "JPEG"
    assert await balance(api, user) == 25 - 5 - 15

    other = await verified_user(api, settings.data_dir / "outbox")
    stolen = await api.post("/api/content/generate/video", token=other.access_token, json={
        "prompt": "steal it", "source_content_id": image_done["id"]})
    assert stolen.status == 404 and stolen.body["error"] == "not_found"
    assert (await api.get(f"/api/content/{done['id']}", token=other.access_token)).status == 404
    assert await balance(api, other) == 25


async def test_bad_requests_change_nothing(api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    bad = [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": "ok", "quality": "ultra"}, "quality"),
        ({"prompt": "ok", "aspect_ratio": "5:1"}, "aspect_ratio"),
        ({"prompt": "ok", "credits_cost": 0}, "credits_cost"),
    ]
    for body, field in bad:
        reply = await api.post("/api/content/generate/image", token=user.access_token, json=body)
        assert reply.status == 400, (body, reply)
        assert reply.body["details"][0]["field"] == field
    too_long = await api.post("/api/content/generate/video", token=user.access_token,
                              json={"prompt": "ok", "duration_seconds": 16})
    assert too_long.status == 400
    missing_avatar = await api.post("/api/content/generate/image", token=user.access_token,
                                    json={"prompt": "ok", "avatar_id": str(uuid.uuid4())})
    assert missing_avatar.status == 404
    # 25 credits: a premium video costs 30.
    broke = await api.post("/api/content/generate/video", token=user.access_token,
                           json={"prompt": "an expensive video", "quality": "premium"})
    assert broke.status == 402 and broke.body["error"] == "insufficient_credits"
    assert broke.body["details"] == [{"required": 30, "balance": 25}]
    assert await balance(api, user) == 25
    assert (await api.get("/api/content", token=user.access_token)).body["total"] == 0
    assert [r["type"] for r in await _ledger(database_url, user.id)] == ["bonus"]

    unverified = await api.register()
    refused = await api.post("/api/content/generate/image", token=unverified.access_token, json={"prompt": "hi"})
    assert refused.status == 403 and refused.body["error"] == "email_not_verified"
    assert (await api.post("/api/content/generate/image", json={"prompt": "hi"})).status == 401


async def _processing(api: Api, user: User, content_id: str) -> dict:
    return await wait_for_content(api, user, content_id, statuses=("processing",))


async def test_cancel_during_processing_refunds_once_and_keeps_no_file(api: Api, settings, database_url) -> None:
    slow = settings.model_copy(update={"local_ai_delay_ms": 1500})
    async with running_worker(slow):
        user = await verified_user(api, settings.data_dir / "outbox")
        queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "slow one"})
        await _processing(api, user, queued.body["id"])
        canceled = await api.post(f"/api/content/{queued.body['id']}/cancel", token=user.access_token)
        assert canceled.status == 200 and canceled.body["status"] == "canceled"
        again = await api.post(f"/api/content/{queued.body['id']}/cancel", token=user.access_token)
        assert again.status == 409
        assert await balance(api, user) == 25
        await asyncio.sleep(2.5)  # the provider answers late; its result must be discarded
    final = await api.get(f"/api/content/{queued.body['id']}", token=user.access_token)
    assert final.body["status"] == "canceled" and final.body["url"] is None
    assert _files_of(settings.data_dir, queued.body["id"]) == []
    kinds = [r["type"] for r in await _ledger(database_url, user.id)]
    assert kinds == ["bonus", "spend", "refund"]


async def test_retry_charges_again_and_only_failed_or_canceled(api: Api, worker, settings, database_url) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "retry me"})
    done = await wait_for_content(api, user, queued.body["id"])
    refused = await api.post(f"/api/content/{done['id']}/retry", token=user.access_token)
    assert refused.status == 409 and refused.body["error"] == "conflict"

    second = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "cancel me"})
    await api.post(f"/api/content/{second.body['id']}/cancel", token=user.access_token)
    assert await balance(api, user) == 20
    retried = await api.post(f"/api/content/{second.body['id']}/retry", token=user.access_token)
    assert retried.status == 202 and retried.body["status"] == "queued"
    finished = await wait_for_content(api, user, second.body["id"])
    assert finished["status"] == "completed"
    assert await balance(api, user) == 15
    keys_ = [r["idempotency_key"] for r in await _ledger(database_url, user.id)]
    sid = second.body["id"]
    assert f"content:{sid}:charge" in keys_ and f"content:{sid}:refund" in keys_
    assert f"content:{sid}:charge:1" in keys_ and f"content:{sid}:refund:1" not in keys_


async def test_delete_cancels_refunds_and_removes_files(api: Api, worker, settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "to delete"})
    done = await wait_for_content(api, user, queued.body["id"])
    assert _files_of(settings.data_dir, done["id"])
    gone = await api.delete(f"/api/content/{done['id']}", token=user.access_token)
    assert gone.status == 204
    assert (await api.get(f"/api/content/{done['id']}", token=user.access_token)).status == 404
    assert _files_of(settings.data_dir, done["id"]) == []
    assert (await api.delete(f"/api/content/{done['id']}", token=user.access_token)).status == 404


async def test_the_same_job_run_twice_charges_once_and_keeps_one_file(api: Api, settings, app_server, database_url) -> None:
    """At-least-once delivery: the job the row names runs twice at once, then once more."""
    from jobs.generation import run_generation

    res = app_server.app[keys.resources]
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "twice"})
    content_id = queued.body["id"]
    ctx = {"res": res, "job_id": content_id, "job_try": 1}
    first = await asyncio.gather(*(run_generation({**ctx}, content_id, kind="image", timeout=60) for _ in range(2)),
                                 return_exceptions=True)
    later = await run_generation({**ctx, "job_try": 3}, content_id, kind="image", timeout=60)
    assert sorted(map(str, first)) == ["completed", "discarded"] and later == "skipped", (first, later)
    done = (await api.get(f"/api/content/{content_id}", token=user.access_token)).body
    assert done["status"] == "completed"
    files = _files_of(settings.data_dir, content_id)
    assert len(files) == 2  # the image and its thumbnail, once: the superseded run removed its own
    kinds = [r["type"] for r in await _ledger(database_url, user.id)]
    assert kinds == ["bonus", "spend"]


async def test_generation_rate_limit(settings, worker) -> None:
    from server.config import Settings
    from tests.conftest import start_app

    limited = Settings(**{**settings.model_dump(), "rate_limit_generation": "2/minute",
                          "jwt_secret": settings.jwt_secret, "db_password": settings.db_password})
    server = await start_app(limited)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        user = await verified_user(api, settings.data_dir / "outbox")
        replies = [await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": f"n{i}"})
                   for i in range(3)]
        assert [r.status for r in replies] == [202, 202, 429]
        assert replies[2].headers["Retry-After"]
        assert await balance(api, user) == 15
    finally:
        await api.close()
        await server.close()


async def test_the_request_id_reaches_the_job_logs(api: Api, worker, settings, caplog) -> None:
    import logging

    user = await verified_user(api, settings.data_dir / "outbox")
    caplog.set_level(logging.INFO, logger="jobs")
    queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "traced"},
                            headers={"X-Request-ID": "trace-0123456789"})
    assert queued.headers["X-Request-ID"] == "trace-0123456789"
    await wait_for_content(api, user, queued.body["id"])
    for _ in range(50):
        runs = [r for r in caplog.records if r.name == "jobs" and "generate_image" in r.getMessage()]
        if runs:
            break
        await asyncio.sleep(0.05)
    assert runs and runs[0].request_id == "trace-0123456789"


async def test_generation_queued_while_its_avatar_is_being_created_waits_for_it(api: Api, settings) -> None:
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    avatar = await api.post("/api/avatars", token=user.access_token,
                            json={"name": "Ines", "age": 31, "description": "a sculptor"})
    assert avatar.status == 202 and avatar.body["status"] == "creating"
    queued = await api.post("/api/content/generate/image", token=user.access_token,
                            json={"prompt": "in her studio", "avatar_id": avatar.body["id"]})
    assert queued.status == 202
    async with running_worker(settings):
        done = await wait_for_content(api, user, queued.body["id"])
    assert done["status"] == "completed" and done["avatar_id"] == avatar.body["id"]
    ready = await api.get(f"/api/avatars/{avatar.body['id']}", token=user.access_token)
    assert ready.body["status"] == "ready"
    assert ready.body["profile"]["identity"] in done["enhanced_prompt"]  # the profile reached the prompt
    assert ready.body["content_count"] == 1


async def test_a_canceled_run_cannot_finish_the_retry_that_replaced_it(api: Api, settings, app_server,
                                                                      caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="jobs")
    slow = settings.model_copy(update={"local_ai_delay_ms": 1200})
    async with running_worker(slow):
        user = await verified_user(api, settings.data_dir / "outbox")
        queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "twice"})
        await _processing(api, user, queued.body["id"])
        await api.post(f"/api/content/{queued.body['id']}/cancel", token=user.access_token)
        retried = await api.post(f"/api/content/{queued.body['id']}/retry", token=user.access_token)
        assert retried.status == 202
        done = await wait_for_content(api, user, queued.body["id"], timeout=30)
        await asyncio.sleep(1.5)  # the canceled run's provider call returns meanwhile
    assert done["status"] == "completed"
    events = await history(app_server.app[keys.resources], user.id)
    completed = [p for name, p in events if name == "generation.completed"]
    assert len(completed) == 1
    assert len(_files_of(settings.data_dir, queued.body["id"])) == 2  # one image + thumbnail: the retry's
    assert await balance(api, user) == 20  # first charge refunded on cancel, the retry charged once
    runs = {r.args[1]: r.args[2] for r in caplog.records if r.name == "jobs" and r.args[0] == "generate_image"}
    assert runs[f"{queued.body['id']}:retry1"] == "completed"  # the retry's own run finished it
    assert runs[queued.body["id"]] == "discarded"  # the canceled run threw its result away
