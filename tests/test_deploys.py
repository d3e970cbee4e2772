"""Deploys lose nothing: SIGTERM drains a server and hands a worker's jobs to the next one."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import pytest
import socketio

from db.session import transaction
from server import keys
from server.avatars.service import job_id as avatar_job_id
from server.config import Settings
from server.credits.audit import find_drift
from tests.support.api import Api, verified_user
from tests.support.flows import balance, wait_for_avatar, wait_for_content
from tests.support.processes import ServerProcess, WorkerProcess
from tests.support.workers import running_worker

pytestmark = pytest.mark.slow


async def _wait_running(app_server, settings: Settings, job_id: str) -> None:
    from arq.jobs import Job, JobStatus

    queue = app_server.app[keys.resources].queue
    for _ in range(300):
        if await Job(job_id, queue, _queue_name=settings.key("queue")).status() == JobStatus.in_progress:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never ran")


async def _ledger_rows(app_server, user_id: str) -> list[tuple[str, int]]:
    from sqlalchemy import text

    async with transaction(app_server.app[keys.resources].sessionmaker) as session:
        rows = await session.execute(text(
            "SELECT type, amount FROM credit_transactions WHERE user_id = :u ORDER BY created_at"),
            {"u": uuid.UUID(user_id)})
        assert await find_drift(session) == []
        return [(r.type, r.amount) for r in rows]


async def test_sigterm_on_serve_finishes_in_flight_requests_and_closes_sockets(
        settings: Settings, api: Api) -> None:
    user = await api.register()
    async with ServerProcess(settings) as server:
        client = socketio.AsyncClient(reconnection=False)
        gone = asyncio.Event()
        client.on("disconnect", lambda *a: gone.set())
        await client.connect(server.url, auth={"token": user.access_token}, transports=["websocket"])

        # A request in flight: its body arrives slowly, so its handler is still reading it.
        body = b'{"email": "nobody@example.com", "password": "not the password"}'
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /api/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        await writer.drain()
        await asyncio.sleep(0.3)  # the server has the request and its handler waits for the rest
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(gone.wait(), 5)  # sockets closed: clients reconnect elsewhere
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):  # no new connections
                async with http.get(server.url + "/health", timeout=aiohttp.ClientTimeout(total=2)):
                    pass
        writer.write(body[10:])
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 401"), head  # answered, not dropped
        writer.close()
        assert await asyncio.to_thread(server.proc.wait, 15) == 0
        await client.disconnect()


async def test_sigterm_on_a_worker_hands_a_long_generation_to_the_next_worker(
        settings: Settings, api: Api, app_server) -> None:
    slow = settings.model_copy(update={"local_ai_delay_ms": 4000, "worker_shutdown_grace_seconds": 1,
                                       "sweep_interval_seconds": 60})
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    first = WorkerProcess(slow).start()
    try:
        queued = await api.post("/api/content/generate/video", token=user.access_token,
                                json={"prompt": "a slow video", "duration_seconds": 2})
        assert queued.status == 202, queued
        await wait_for_content(api, user, queued.body["id"], statuses=("processing",), timeout=30)
        first.signal(signal.SIGTERM)
        assert await first.wait(15) == 0
    finally:
        await first.__aexit__()
    handed = (await api.get(f"/api/content/{queued.body['id']}", token=user.access_token)).body
    assert handed["status"] == "queued" and handed["stage"] == "handed_back", handed
    assert handed["attempts"] == 0  # a shutdown is not a failed attempt
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with WorkerProcess(settings.model_copy(update={"local_ai_delay_ms": 50})):
        await wait_for_content(api, user, queued.body["id"], statuses=("processing", "completed"), timeout=10)
        taken_after = loop.time() - started
        done = await wait_for_content(api, user, queued.body["id"], timeout=60)
    assert done["status"] == "completed" and done["attempts"] == 1, done
    assert taken_after < 8  # at once, not after a lease or a sweep
    assert await balance(api, user) == 25 - 15
    assert [r for r in await _ledger_rows(app_server, user.id) if r[0] in ("spend", "refund")] == [("spend", -15)]


async def test_sigterm_lets_a_short_job_finish_within_the_grace(settings: Settings, api: Api) -> None:
    quick = settings.model_copy(update={"local_ai_delay_ms": 300, "worker_shutdown_grace_seconds": 10})
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    worker = WorkerProcess(quick).start()
    try:
        queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "quick"})
        await wait_for_content(api, user, queued.body["id"], statuses=("processing",), timeout=30)
        worker.signal(signal.SIGTERM)
        assert await worker.wait(20) == 0
    finally:
        await worker.__aexit__()
    done = (await api.get(f"/api/content/{queued.body['id']}", token=user.access_token)).body
    assert done["status"] == "completed" and done["attempts"] == 1


async def test_sigterm_during_avatar_creation_neither_fails_nor_refunds_it(
        settings: Settings, api: Api, app_server) -> None:
    slow = settings.model_copy(update={"local_ai_delay_ms": 4000, "worker_shutdown_grace_seconds": 0})
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    worker = WorkerProcess(slow).start()
    try:
        created = await api.post("/api/avatars", token=user.access_token, json={"name": "Mara", "age": 30})
        assert created.status == 202, created
        await _wait_running(app_server, settings, avatar_job_id(created.body["id"]))  # 4 s of "thinking"
        worker.signal(signal.SIGTERM)
        assert await worker.wait(15) == 0
    finally:
        await worker.__aexit__()
    avatar = (await api.get(f"/api/avatars/{created.body['id']}", token=user.access_token)).body
    assert avatar["status"] == "creating", avatar
    async with WorkerProcess(settings.model_copy(update={"local_ai_delay_ms": 50})):
        avatar = await wait_for_avatar(api, user, created.body["id"])
    assert avatar["status"] == "ready", avatar
    assert [r for r in await _ledger_rows(app_server, user.id) if r[0] in ("spend", "refund")] == [("spend", -10)]
