"""The generation pipeline with real workers: users are served fairly, images never wait
behind rendering videos, and a video's polls (the same job, deferred) pay the provider
once, complete once, and are recovered by the sweep when lost."""

from __future__ import annotations

import asyncio
import statistics
import uuid

import asyncpg
import pytest
from arq.constants import job_key_prefix
from pydantic import SecretStr

from jobs.sweep import sweep_generations
from server import keys
from server.content.runner import GenerationRun
from server.queueing import fair_key
from tests.conftest import _asyncpg_dsn, start_app
from tests.support.api import Api, User, verified_user
from tests.support.events import history
from tests.support.fake_xai import FakeXai, Latency
from tests.support.flows import balance, wait_for_content
from tests.support.workers import running_worker

IMAGE, VIDEO = "/api/content/generate/image", "/api/content/generate/video"


async def _pro_user(api: Api, settings) -> User:
    """A verified user on the Pro plan (local billing: active at once, 500 credits, cap 50)."""
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    reply = await api.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token)
    assert reply.status == 201, reply
    return user


async def _rows(database_url: str, ids: list[str]) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT id::text, status, attempts, created_at, started_at, completed_at, stage "
            "FROM generated_content WHERE id = ANY($1::uuid[])", ids)
    finally:
        await conn.close()
    return {r["id"]: r for r in rows}


async def _job_of(database_url: str, content_id: str) -> str:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        return await conn.fetchval("SELECT job_id FROM generated_content WHERE id = $1::uuid", content_id)
    finally:
        await conn.close()


async def _all_final(api: Api, user: User, ids: list[str], timeout: float = 60) -> None:
    for content_id in ids:
        done = await wait_for_content(api, user, content_id, timeout=timeout)
        assert done["status"] == "completed", done


async def test_one_users_backlog_does_not_hold_back_another_users_first_job(
        api: Api, settings, database_url) -> None:
    a = await _pro_user(api, settings)
    b = await _pro_user(api, settings)
    narrow = settings.model_copy(update={"worker_image_jobs": 2, "local_ai_delay_ms": 300})
    async with running_worker(narrow):
        backlog = []
        for i in range(24):
            reply = await api.post(IMAGE, token=a.access_token, json={"prompt": f"backlog {i}"})
            assert reply.status == 202, reply
            backlog.append(reply.body["id"])
        first = await api.post(IMAGE, token=b.access_token, json={"prompt": "my first one"})
        assert first.status == 202
        await _all_final(api, a, backlog)
        await _all_final(api, b, [first.body["id"]])
    rows = await _rows(database_url, [*backlog, first.body["id"]])
    mine = rows[first.body["id"]]
    theirs = [rows[i] for i in backlog]
    job_time = statistics.median((r["completed_at"] - r["started_at"]).total_seconds() for r in theirs)
    waited = (mine["started_at"] - mine["created_at"]).total_seconds()
    overtaken = [r for r in theirs if mine["created_at"] < r["started_at"] < mine["started_at"]]
    # FIFO would have made B wait for ~20 of A's jobs, ~10 job times with two slots.
    assert len(overtaken) <= 1, (waited, job_time, len(overtaken))
    assert waited <= job_time + 1.0, (waited, job_time)
    # Among A's own jobs the order stays first come, first served (up to jobs started together).
    by_start = [r["id"] for r in sorted(theirs, key=lambda r: r["started_at"])]
    assert all(abs(by_start.index(content_id) - i) < 2 for i, content_id in enumerate(backlog)), by_start


@pytest.fixture
async def rendering_xai():
    """xAI whose videos take ~4 s to render and whose images come at once."""
    fake = await FakeXai(latency=Latency(video_render=(4.0, 4.5))).start()
    yield fake
    await fake.close()


def _grok(settings, xai: FakeXai, **extra):
    return settings.model_copy(update={
        "grok_api_key": SecretStr(xai.api_key), "grok_base_url": xai.base_url, "grok_timeout_seconds": 5.0,
        "video_poll_interval_seconds": 0.2, **extra})


async def _until(check, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.05)


async def _rendering(api: Api, user: User, ids: list[str]) -> bool:
    items = (await api.get("/api/content?type=video&limit=100", token=user.access_token)).body["items"]
    return sum(1 for c in items if c["id"] in ids and c["status"] == "processing" and c["stage"] == "rendering") \
        == len(ids)


async def test_an_image_starts_at_once_while_more_videos_render_than_the_worker_has_slots(
        settings, rendering_xai, database_url) -> None:
    narrow = _grok(settings, rendering_xai, worker_image_jobs=2, worker_video_jobs=2, worker_other_jobs=2)
    server = await start_app(narrow)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        user = await _pro_user(api, narrow)
        async with running_worker(narrow):
            videos = []
            for i in range(8):  # more videos than the worker has slots of all kinds (six)
                reply = await api.post(VIDEO, token=user.access_token, json={"prompt": f"waves {i}"})
                assert reply.status == 202, reply
                videos.append(reply.body["id"])
            await _until(lambda: _rendering(api, user, videos), timeout=15)  # all eight in flight at once
            image = await api.post(IMAGE, token=user.access_token, json={"prompt": "meanwhile, a still"})
            assert image.status == 202
            done = await wait_for_content(api, user, image.body["id"], timeout=10)
            assert done["status"] == "completed"
            assert await _rendering(api, user, videos)  # the image did not wait for any of them
            await _all_final(api, user, videos)
        rows = await _rows(database_url, [*videos, image.body["id"]])
        still = rows[image.body["id"]]
        assert (still["started_at"] - still["created_at"]).total_seconds() < 1.0
        assert all(rows[v]["completed_at"] > still["completed_at"] and rows[v]["attempts"] == 1 for v in videos)
        assert len(rendering_xai.calls("POST /v1/videos/generations")) == 8  # each video paid once
        assert await balance(api, user) == 525 - 8 * 15 - 5
    finally:
        await api.close()
        await server.close()


async def test_a_videos_poll_run_twice_pays_once_and_completes_once(settings, xai, database_url) -> None:
    xai.video_polls_before_done = 3
    configured = _grok(settings, xai)
    server = await start_app(configured)
    api = Api(str(server.make_url("")).rstrip("/"))
    res = server.app[keys.resources]
    try:
        async with running_worker(configured):
            user = await verified_user(api, configured.data_dir / "outbox")
        queued = await api.post(VIDEO, token=user.access_token, json={"prompt": "a long take"})
        content_id = queued.body["id"]

        def run(job_id: str = content_id) -> GenerationRun:
            return GenerationRun(res, uuid.UUID(content_id), job_id=job_id, timeout=60, kind="video")

        assert (await run().run()).outcome == "polling"  # claimed, paid, polled once
        assert (await run("someone-else").run()).outcome == "skipped"
        # The same poll delivered twice at once (polls 2 and 3, then 4 and 5: done).
        assert [r.outcome for r in await asyncio.gather(run().run(), run().run())] == ["polling", "polling"]
        outcomes = [r.outcome for r in await asyncio.gather(run().run(), run().run())]
        assert "completed" in outcomes and set(outcomes) <= {"completed", "discarded"}, outcomes
        assert (await run().run()).outcome == "skipped"  # a late poll finds it finished
        done = (await api.get(f"/api/content/{content_id}", token=user.access_token)).body
        assert done["status"] == "completed" and done["attempts"] == 1
        assert len(xai.calls("POST /v1/videos/generations")) == 1
        events = await history(res, user.id)
        assert [n for n, p in events if n == "generation.completed"] == ["generation.completed"]
        files = list((configured.data_dir / "files").rglob(f"*{content_id}*"))
        assert len(files) == 2, files  # the video and its thumbnail, once
        assert await balance(api, user) == 10
    finally:
        await api.close()
        await server.close()


async def test_the_sweep_recovers_a_video_whose_poll_job_was_lost_without_paying_again(
        settings, rendering_xai, database_url) -> None:
    configured = _grok(settings, rendering_xai, generation_lease_seconds=2)
    server = await start_app(configured)
    api = Api(str(server.make_url("")).rstrip("/"))
    res = server.app[keys.resources]
    try:
        user = await _pro_user(api, configured)
        async with running_worker(configured):
            queued = await api.post(VIDEO, token=user.access_token, json={"prompt": "lost and found"})
            content_id = queued.body["id"]
            await _until(lambda: _rendering(api, user, [content_id]), timeout=15)
        # Redis forgets the deferred poll (no worker runs meanwhile); the lease runs out.
        queue = res.settings.key("queue")
        assert await res.queue.zrem(queue, content_id) == 1
        await res.queue.delete(job_key_prefix + content_id)
        await asyncio.sleep(2.5)

        async def taken_over() -> bool:  # the database shares other tests' rows: look at ours
            await sweep_generations({"res": res})
            return (await _job_of(database_url, content_id)).startswith(f"{content_id}:takeover")

        await _until(taken_over, timeout=10)
        async with running_worker(configured):
            done = await wait_for_content(api, user, content_id, timeout=30)
        assert done["status"] == "completed" and done["attempts"] == 2, done
        assert len(rendering_xai.calls("POST /v1/videos/generations")) == 1  # polled on, not paid again
        assert await balance(api, user) == 525 - 15
    finally:
        await api.close()
        await server.close()


async def test_a_parked_job_that_lost_its_fair_place_is_requeued_by_the_sweep(
        api: Api, app_server, settings, database_url) -> None:
    res = app_server.app[keys.resources]
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    queued = await api.post(IMAGE, token=user.access_token, json={"prompt": "forgotten"})
    content_id = queued.body["id"]
    quick = settings.model_copy(update={"queued_grace_seconds": 0})
    view = type("R", (), {})()
    view.__dict__.update(res.__dict__)
    view.settings = quick
    await sweep_generations({"res": view})
    assert await _job_of(database_url, content_id) == content_id  # waiting its turn: alive, left alone
    assert await res.queue.zrem(fair_key(settings.key("queue"), "image"), content_id) == 1
    await sweep_generations({"res": view})
    assert (await _job_of(database_url, content_id)).startswith(f"{content_id}:sweep")  # parked, reachable by nobody
    async with running_worker(settings):
        done = await wait_for_content(api, user, content_id)
    assert done["status"] == "completed" and done["attempts"] == 1
    assert await balance(api, user) == 20


async def test_a_queued_generation_whose_job_died_before_claiming_it_is_requeued(
        api: Api, app_server, settings, database_url) -> None:
    """A worker killed between starting a job and claiming its row leaves arq's running mark for
    minutes; the sweep does not wait for it to expire."""
    from arq.constants import in_progress_key_prefix

    res = app_server.app[keys.resources]
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    queued = await api.post(IMAGE, token=user.access_token, json={"prompt": "orphaned"})
    content_id = queued.body["id"]
    view = type("R", (), {})()
    view.__dict__.update(res.__dict__)
    view.settings = settings.model_copy(update={"queued_grace_seconds": 0, "generation_db_patience_seconds": 1})
    marker, lifetime = in_progress_key_prefix + content_id, 310_000
    await res.queue.set(marker, b"1", px=lifetime)  # just started: a live run, left alone
    await sweep_generations({"res": view, "in_progress_ms": lifetime})
    assert await _job_of(database_url, content_id) == content_id
    await res.queue.set(marker, b"1", px=lifetime - 20_000)  # marked 20 s ago and never claimed
    await sweep_generations({"res": view, "in_progress_ms": lifetime})
    assert (await _job_of(database_url, content_id)).startswith(f"{content_id}:sweep")
    async with running_worker(settings):
        done = await wait_for_content(api, user, content_id)
    assert done["status"] == "completed" and done["attempts"] == 1
    await res.queue.delete(marker)


def test_arqs_lines_for_each_poll_of_a_rendering_video_are_left_out() -> None:
    import logging

    from jobs.worker import QuietPolls

    def line(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord("arq.worker", logging.INFO, __file__, 1, msg, args, None)

    quiet = QuietPolls()
    assert not quiet.filter(line("%6.2fs → %s(%s)%s", 1.0, "c1:generate_video", "'c1'", " try=7"))
    assert not quiet.filter(line("%6.2fs ↻ %s retrying job in %0.2fs", 0.1, "c1:generate_video", 5.0))
    assert quiet.filter(line("%6.2fs → %s(%s)%s", 1.0, "c1:generate_video", "'c1'", ""))  # its first run
    assert quiet.filter(line("%6.2fs ↻ %s retrying job in %0.2fs", 0.1, "c2:generate_image", 2.0))
    assert quiet.filter(line("%6.2fs ← %s ● %s", 9.0, "c1:generate_video", "'completed'"))
