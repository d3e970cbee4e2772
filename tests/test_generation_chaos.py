"""No charged generation is lost or charged twice when a worker or Redis dies at a bad moment."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.worker import cron_jobs
from server.config import Settings
from server.embedded import EmbeddedRedis, free_port
from tests.conftest import start_app
from tests.support.api import Api, verified_user
from tests.support.flows import balance, wait_for_content
from tests.support.processes import WorkerProcess
from tests.support.workers import running_worker

pytestmark = pytest.mark.slow


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "APP_ENV": "test", "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_dsn,
        "REDIS_NAMESPACE": settings.redis_namespace, "JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "DATA_DIR": str(settings.data_dir), "LOG_JSON": "false", "BCRYPT_ROUNDS": "4",
        "LOCAL_AI_DELAY_MS": str(settings.local_ai_delay_ms),
        "GENERATION_LEASE_SECONDS": str(settings.generation_lease_seconds),
        "SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
        "QUEUED_GRACE_SECONDS": str(settings.queued_grace_seconds),
        **extra,
    })
    return env


def _worker_process(settings: Settings) -> WorkerProcess:
    return WorkerProcess(settings).start()


def _ledger_check(settings: Settings) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", "ledger", "check"], env=_env(settings),
                          capture_output=True, text=True, timeout=60)


async def test_sigkill_mid_job_then_a_new_worker_finishes_it(api: Api, settings: Settings) -> None:
    chaos = settings.model_copy(update={"local_ai_delay_ms": 2000, "generation_lease_seconds": 2,
                                        "sweep_interval_seconds": 1})
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    first = _worker_process(chaos)
    try:
        queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "chaos"})
        assert queued.status == 202
        await wait_for_content(api, user, queued.body["id"], statuses=("processing",), timeout=30)
        first.signal(signal.SIGKILL)
        await first.wait(10)
    finally:
        await first.__aexit__()
    second = _worker_process(chaos)
    try:
        done = await wait_for_content(api, user, queued.body["id"], timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- second worker:\n{second.log_tail()}") from None
    finally:
        await second.__aexit__()
    assert done["status"] == "completed", done
    assert done["attempts"] == 2  # the dead worker's attempt, then the takeover
    assert await balance(api, user) == 20  # charged once
    check = _ledger_check(settings)
    assert check.returncode == 0, check.stderr
    assert "ledger ok" in check.stdout


async def test_redis_down_during_post_never_charges_without_content(settings: Settings, tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path / "redis", port=free_port())
    shaky = Settings(**{**settings.model_dump(), "redis_url": redis.url, "jwt_secret": settings.jwt_secret,
                        "db_password": settings.db_password, "queued_grace_seconds": 1,
                        "sweep_interval_seconds": 1})
    server = await start_app(shaky)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        async with running_worker(shaky):
            user = await verified_user(api, shaky.data_dir / "outbox")
        redis.stop()
        # Rate limiting needs Redis: a clear 503 before anything is written.
        refused = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "no redis"})
        assert refused.status == 503 and refused.body["error"] == "service_unavailable"

        # Without rate limits requests get through: charged, queued, but the job is not enqueued.
        lenient = Settings(**{**shaky.model_dump(), "rate_limit_enabled": False,
                              "jwt_secret": settings.jwt_secret, "db_password": settings.db_password})
        server2 = await start_app(lenient)
        api2 = Api(str(server2.make_url("")).rstrip("/"))
        try:
            assert await balance(api2, user) == 25
            assert (await api2.get("/api/content", token=user.access_token)).body["total"] == 0
            accepted = await api2.post("/api/content/generate/image", token=user.access_token,
                                       json={"prompt": "enqueue fails"})
            assert accepted.status == 202 and accepted.body["status"] == "queued"
            assert await balance(api2, user) == 20
        finally:
            await api2.close()
            await server2.close()

        redis = EmbeddedRedis(tmp_path / "redis", port=redis.port)  # Redis comes back, empty of that job
        async with running_worker(shaky, cron_jobs=cron_jobs(shaky)):
            done = await wait_for_content(api, user, accepted.body["id"], timeout=30)
        assert done["status"] == "completed"
        assert await balance(api, user) == 20
    finally:
        await api.close()
        await server.close()
        redis.stop()
    check = _ledger_check(settings)
    assert check.returncode == 0, check.stderr


async def test_generation_that_never_finishes_is_failed_and_refunded_by_the_sweep(api: Api, settings: Settings,
                                                                                 database_url: str) -> None:
    import asyncpg

    from tests.conftest import _asyncpg_dsn

    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    fast_sweep = settings.model_copy(update={"sweep_interval_seconds": 1})
    queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "stuck"})
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        # As if every attempt's worker had died: processing, attempts used up, lease long gone.
        await conn.execute(
            "UPDATE generated_content SET status = 'processing', attempts = $2, "
            "deadline_at = now() - interval '1 minute' WHERE id = $1::uuid",
            queued.body["id"], settings.generation_max_attempts)
    finally:
        await conn.close()
    async with running_worker(fast_sweep, cron_jobs=cron_jobs(fast_sweep)):
        done = await wait_for_content(api, user, queued.body["id"], timeout=15)
    assert done["status"] == "failed" and "attempts" in done["error"]
    assert await balance(api, user) == 25
    await asyncio.sleep(0)
