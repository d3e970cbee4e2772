"""Real servers for the suite: PostgreSQL and Redis (given by URL, else embedded), a database
and a Redis namespace of each test's own, and the app on a real port."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from redis import Redis as SyncRedis

from server.config import Settings
from tests.support.api import Api
from tests.support.sockets import SocketClient

RUN_ID = uuid.uuid4().hex[:10]


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    """(PostgreSQL admin URL, Redis URL): from the environment, else embedded servers."""
    from server.embedded import EmbeddedPostgres, EmbeddedRedis

    started = []
    tmp = Path(tempfile.mkdtemp(prefix="lustify-services-"))
    db_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    if not db_url:
        pg = EmbeddedPostgres(tmp / "postgres")
        started.append(pg)
        db_url = pg.uri
    if not redis_url:
        rd = EmbeddedRedis(tmp / "redis")
        started.append(rd)
        redis_url = rd.url
    yield db_url, redis_url
    for server in reversed(started):
        server.stop()
    shutil.rmtree(tmp, ignore_errors=True)


def admin_sql(admin_url: str, sql: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) on the server's admin database."""

    async def run() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _replace_database(url: str, name: str) -> str:
    head, _, tail = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{tail}" if tail else "")


@pytest.fixture(scope="session")
def template_database(service_urls: tuple[str, str]) -> Iterator[str]:
    """Migrated with alembic and seeded once per run; each test gets a copy of it."""
    admin_url, _ = service_urls
    name = f"lustify_test_{RUN_ID}_template"
    admin_sql(admin_url, f'CREATE DATABASE "{name}"')
    url = _replace_database(admin_url, name)
    from db.migrate import upgrade

    upgrade(Settings(_env_file=None, database_url=url).sqlalchemy_url)
    from server.cli import _seed

    asyncio.run(_seed(Settings(_env_file=None, database_url=url)))
    yield name
    admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_copies = itertools.count()


@pytest.fixture
def database_url(service_urls: tuple[str, str], template_database: str) -> Iterator[str]:
    """A database of this test's own (a copy of the template), dropped after it: tests never
    see each other's rows, and a sweep only ever adopts its own test's generations."""
    admin_url, _ = service_urls
    name = f"lustify_test_{RUN_ID}_{next(_copies)}"
    admin_sql(admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}" STRATEGY FILE_COPY')
    yield _replace_database(admin_url, name)
    admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url(service_urls: tuple[str, str]) -> Iterator[str]:
    _, url = service_urls
    yield url
    client = SyncRedis.from_url(url)
    for key in client.scan_iter(match=f"lustify-test-{RUN_ID}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_data_dir: Path) -> Iterator[Settings]:
    """Test settings: fast bcrypt, generous limits, a Redis namespace of this test's own
    (emptied after it)."""
    configured = Settings(
        _env_file=None,
        app_env="test",
        database_url=database_url,
        redis_url=redis_url,
        redis_namespace=f"lustify-test-{RUN_ID}-{uuid.uuid4().hex[:8]}",
        jwt_secret=f"test-secret-{RUN_ID}-0123456789abcdef0123456789",
        bcrypt_rounds=4,
        rate_limit_auth="1000/minute",
        rate_limit_api="100000/minute",
        rate_limit_generation="1000/minute",
        rate_limit_mail="1000/minute",
        data_dir=tmp_data_dir,
        local_ai_delay_ms=0,
        log_json=False,
        db_pool_size=5,
    )
    yield configured
    client = SyncRedis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{configured.redis_namespace}*", count=1000):
            client.delete(key)
    finally:
        client.close()


async def start_app(settings: Settings) -> TestServer:
    from server.app import create_app

    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    return server


@asynccontextmanager
async def app_with_route(settings: Settings, method: str, path: str, handler: Callable) -> AsyncIterator[Api]:
    """The whole app plus one extra route (auth and rate limits off), for what no real route can do."""
    from server.app import create_app
    from server.route_handling import install
    from server.routing import Routes

    app = create_app(settings)
    extra = Routes()
    getattr(extra, method)(path, auth=False, rate_limit=None)(handler)
    install(app, [extra])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = Api(str(server.make_url("")).rstrip("/"))
    try:
        yield client
    finally:
        await client.close()
        await server.close()


@pytest.fixture
async def app_server(settings: Settings) -> AsyncIterator[TestServer]:
    server = await start_app(settings)
    yield server
    await server.close()


@pytest.fixture
async def api(app_server: TestServer) -> AsyncIterator[Api]:
    client = Api(str(app_server.make_url("")).rstrip("/"))
    yield client
    await client.close()


@pytest.fixture
async def sockets() -> AsyncIterator[Callable[[], SocketClient]]:
    """Makes real Socket.IO clients; closes them at the end of the test."""
    made: list[SocketClient] = []

    def make() -> SocketClient:
        made.append(SocketClient())
        return made[-1]

    yield make
    for client in made:
        await client.close()


@pytest.fixture
async def worker(settings: Settings) -> AsyncIterator[object]:
    """A real arq worker in this event loop, on this test's queue."""
    from tests.support.workers import running_worker

    async with running_worker(settings) as arq_worker:
        yield arq_worker


@pytest.fixture
async def xai() -> AsyncIterator[object]:
    """A fake xAI API server on loopback (tests/support/fake_xai.py)."""
    from tests.support.fake_xai import FakeXai

    fake = await FakeXai().start()
    yield fake
    await fake.close()


@pytest.fixture
def own_stack(settings: Settings) -> Iterator[tuple[Settings, object, object]]:
    """(settings, PostgreSQL, Redis) on servers of this test's own, to restart and kill."""
    from db.migrate import upgrade
    from server.cli import _seed
    from tests.support.services import OwnPostgres, OwnRedis

    pg, redis = OwnPostgres(), OwnRedis()
    try:
        admin_sql(pg.admin_url, 'CREATE DATABASE "lustify"')
        own = settings.model_copy(update={"database_url": pg.url("lustify"), "redis_url": redis.url})
        upgrade(own.sqlalchemy_url)
        asyncio.run(_seed(own))
        yield own, pg, redis
    finally:
        redis.close()
        pg.close()


def grok_settings(settings: Settings, xai, **extra: object) -> Settings:
    """The app pointed at the fake xAI server, with short timeouts and backoffs."""
    from pydantic import SecretStr

    return settings.model_copy(update={
        "grok_api_key": SecretStr(xai.api_key), "grok_base_url": xai.base_url, "grok_timeout_seconds": 5.0,
        "moderation_timeout_seconds": 1.0, "generation_retry_backoff_seconds": 0.2,
        "video_poll_interval_seconds": 0.05, **extra})


@pytest.fixture
async def grok_app(settings: Settings, xai) -> AsyncIterator[tuple[Api, TestServer, object]]:
    """(api, server, a verified user) with Grok configured against the fake xAI server and a worker."""
    from tests.support.api import verified_user
    from tests.support.workers import running_worker

    configured = grok_settings(settings, xai)
    server = await start_app(configured)
    api = Api(str(server.make_url("")).rstrip("/"))
    async with running_worker(configured):
        user = await verified_user(api, configured.data_dir / "outbox")
        yield api, server, user
    await api.close()
    await server.close()
