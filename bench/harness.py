"""What every benchmark needs: a database of its own, a server process, timing summaries."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg

from server.config import Settings
from server.embedded import free_port

ADMIN_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@contextlib.asynccontextmanager
async def own_database(prefix: str) -> AsyncIterator[Settings]:
    """A fresh migrated, seeded database and Redis namespace, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    base, _, query = ADMIN_URL.partition("?")
    url = f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_dsn(ADMIN_URL))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(_env_file=None, database_url=url, redis_url=REDIS_URL,
                            redis_namespace=f"lustify-bench-{uuid.uuid4().hex[:8]}",
                            jwt_secret="bench-secret-" + "x" * 32, rate_limit_enabled=False,
                            log_json=False, bcrypt_rounds=4)
        from db.migrate import upgrade
        from server.cli import _seed

        await asyncio.to_thread(upgrade, settings.sqlalchemy_url)  # alembic runs its own loop
        await _seed(settings)
        yield settings
    finally:
        if os.environ.get("BENCH_KEEP_DB"):
            print(f"kept database {name}")
        else:
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "RATE_LIMIT"))}
    env.update({
        "APP_ENV": "test", "DATABASE_URL": settings.database_url or "", "REDIS_URL": settings.redis_dsn,
        "REDIS_NAMESPACE": settings.redis_namespace, "JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING", "LOG_JSON": "false",
        "DATA_DIR": str(settings.data_dir), **extra,
    })
    return env


@contextlib.asynccontextmanager
async def server_process(settings: Settings, **extra: str) -> AsyncIterator[str]:
    """`lustify serve` in its own process; yields its base URL once /health answers."""
    import aiohttp

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
                            env=settings_env(settings, **extra))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url + "/health") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("server did not start")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def summary(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return (f"n={len(ordered)} median={statistics.median(ordered):.2f} ms p95={p(0.95):.2f} ms "
            f"p99={p(0.99):.2f} ms max={ordered[-1]:.2f} ms")


def now_ms() -> float:
    return time.perf_counter() * 1000
