"""Faults as part of the spec: Redis and PostgreSQL restarting under a running system, lost
publishes, dead pooled connections. Each test kills or restarts real servers of its own."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from db.session import make_sessionmaker, transaction
from server import keys
from server.realtime import outbox
from server.realtime.server import hub_of
from tests.conftest import start_app
from tests.support.api import Api, verified_user
from tests.support.events import credits_event, emit_events
from tests.support.flows import balance, wait_for_content
from tests.support.processes import WorkerProcess
from tests.support.sockets import SocketClient
from tests.support.workers import running_worker

pytestmark = pytest.mark.slow


def url_of(server) -> str:
    return str(server.make_url("")).rstrip("/")


async def _health(api: Api) -> dict:
    reply = await api.get("/health")
    return {**reply.body, "http": reply.status}


async def _eventually(check, timeout: float, interval: float = 0.05):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {result!r}")
        await asyncio.sleep(interval)


async def test_a_publish_lost_after_commit_still_reaches_the_client_within_two_seconds(
        app_server, api: Api, sockets) -> None:
    """As if the process died between commit and publish: the event is only in the outbox."""
    user = await api.register()
    client = sockets()
    await client.connect(url_of(app_server), token=user.access_token)
    res = app_server.app[keys.resources]
    bare = make_sessionmaker(res.engine)  # no publisher: nothing goes to Redis
    async with transaction(bare) as session:
        outbox.emit(session, uuid.UUID(user.id), credits_event(7))
    loop = asyncio.get_running_loop()
    started = loop.time()
    [event] = await client.wait_for("credits.updated", 1, timeout=3)
    assert loop.time() - started < 2.0
    assert event["balance"] == 7 and event["event_id"] == session.info["outbox_latest"][uuid.UUID(user.id)]
    assert client.sio.connected


async def test_events_committed_while_redis_is_down_reach_connected_clients(own_stack, sockets) -> None:
    settings, _, redis = own_stack
    server = await start_app(settings)
    api = Api(url_of(server))
    try:
        user = await api.register()
        client = sockets()
        await client.connect(url_of(server), token=user.access_token, last_event_id=0)
        signup = len(client.events) or len(await client.wait_for("credits.updated", 1))
        res = server.app[keys.resources]
        redis.kill()
        during = [(await emit_events(res, user.id, [credits_event(n)]))[0] for n in range(5)]
        await _eventually(lambda: _has(client, during[-1]), timeout=3)  # from the outbox, Redis down
        redis.start()
        realtime = hub_of(server.app)
        await _eventually(lambda: _resubscribed(realtime), timeout=5)
        after = [(await emit_events(res, user.id, [credits_event(10 + n)]))[0] for n in range(5)]
        await _eventually(lambda: _has(client, after[-1]), timeout=3)
        ids = [p["event_id"] for _, p in client.events]
        assert ids == list(range(1, after[-1] + 1)), ids  # every durable event once, in order
        assert client.sio.connected and signup
    finally:
        await api.close()
        await server.close()


async def _has(client: SocketClient, event_id: int) -> bool:
    return any(p.get("event_id") == event_id for _, p in client.events)


async def _resubscribed(realtime) -> bool:
    return realtime.manager._subscriptions >= 2


async def test_the_worker_outlives_a_redis_restart_and_health_shows_it(own_stack) -> None:
    settings, _, redis = own_stack
    server = await start_app(settings)
    api = Api(url_of(server))
    try:
        assert (await _health(api))["checks"]["worker"] == "stale"  # reported, not failing
        assert (await _health(api))["http"] == 200
        async with WorkerProcess(settings) as worker:
            await _eventually(lambda: _worker_is(api, "ok"), timeout=10)
            redis.kill()
            down = await _health(api)
            assert down["http"] == 503 and down["checks"]["redis"].startswith("error")
            await _eventually(lambda: _logged(worker, "worker lost Redis"), timeout=10)
            redis.start()
            await _eventually(lambda: _worker_is(api, "ok"), timeout=10)
            assert worker.proc.poll() is None
            user = await verified_user(api, settings.data_dir / "outbox")
            queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "x"})
            assert queued.status == 202, queued
            done = await wait_for_content(api, user, queued.body["id"], timeout=30)
            assert done["status"] == "completed"
    finally:
        await api.close()
        await server.close()


async def _logged(process: WorkerProcess, text: str) -> bool:
    return text in process.log.read_text(errors="replace")


async def _worker_is(api: Api, state: str) -> bool:
    return (await _health(api))["checks"].get("worker") == state


async def test_a_postgres_restart_fails_no_job_and_answers_no_500(own_stack) -> None:
    settings, pg, _ = own_stack
    slow = settings.model_copy(update={"local_ai_delay_ms": 400})
    server = await start_app(slow)
    api = Api(url_of(server))
    statuses: list[int] = []
    try:
        async with running_worker(slow):
            user = await verified_user(api, slow.data_dir / "outbox")
            ids = []
            for n in range(4):
                reply = await api.post("/api/content/generate/image", token=user.access_token,
                                       json={"prompt": f"restart {n}"})
                assert reply.status == 202, reply
                ids.append(reply.body["id"])
            stop = asyncio.Event()

            async def keep_asking() -> None:
                while not stop.is_set():
                    reply = await api.get("/api/content", token=user.access_token)
                    statuses.append(reply.status)
                    await asyncio.sleep(0.02)

            asker = asyncio.create_task(keep_asking())
            await asyncio.to_thread(pg.restart, "fast")
            done = [await wait_for_content(api, user, i, timeout=60) for i in ids]
            stop.set()
            await asker
        assert [d["status"] for d in done] == ["completed"] * 4, done
        assert await balance(api, user) == 25 - 4 * 5
        assert 500 not in statuses and set(statuses) <= {200, 503}, statuses
    finally:
        await api.close()
        await server.close()


async def test_health_reports_a_stale_worker_without_failing(app_server, api: Api) -> None:
    body = await _health(api)
    assert body["http"] == 200 and body["checks"]["worker"] == "stale"
    async with running_worker(app_server.app[keys.settings]):
        # the in-process worker beats on its first poll
        await _eventually(lambda: _worker_is(api, "ok"), timeout=5)


async def test_health_during_a_drain_is_503(app_server, api: Api) -> None:
    app_server.app[keys.draining].set()
    body = await _health(api)
    assert body["http"] == 503 and body["checks"]["server"] == "draining"
