"""The skeleton works for real: health, error shapes, headers, CORS, OpenAPI, migrations."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest

from tests.conftest import _asyncpg_dsn, app_with_route, start_app
from tests.support.api import Api


async def test_health_reports_database_and_redis(api: Api) -> None:
    reply = await api.get("/health")
    assert reply.status == 200
    assert reply.body["status"] == "ok"
    assert reply.body["checks"] == {"database": "ok", "redis": "ok", "worker": "stale"}  # no worker here
    assert reply.body["version"]


async def test_health_is_503_when_redis_is_unreachable(settings) -> None:
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    server = await start_app(broken)
    client = Api(str(server.make_url("")).rstrip("/"))
    try:
        reply = await client.get("/health")
        assert reply.status == 503
        assert reply.body["checks"]["database"] == "ok"
        assert reply.body["checks"]["redis"].startswith("error")
        assert reply.body["error"] == "service_unavailable"
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/nope", 404, "not_found"),
        ("DELETE", "/health", 405, "method_not_allowed"),
    ],
)
async def test_http_errors_have_the_api_shape(api: Api, method, path, status, code) -> None:
    reply = await api.request(method, path)
    assert reply.status == status
    assert reply.body["error"] == code
    assert isinstance(reply.body["message"], str) and reply.body["message"]
    assert reply.body["details"] == []


async def test_malformed_json_is_400(api: Api) -> None:
    reply = await api.post("/api/auth/login", data=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status == 400
    assert reply.body["error"] == "validation_error"
    assert reply.body["details"][0]["field"] == "body"


async def test_oversized_body_is_413_before_reading(api: Api) -> None:
    big = b"x" * (50 * 1024 * 1024 + 1)
    reply = await api.post("/api/auth/login", data=big, headers={"Content-Type": "application/json"})
    assert reply.status == 413
    assert reply.body["error"] == "payload_too_large"


async def test_unhandled_error_is_500_without_internals(settings) -> None:
    async def explode() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    async with app_with_route(settings, "get", "/boom", explode) as client:
        reply = await client.get("/boom")
        assert reply.status == 500
        assert reply.body["error"] == "internal_error"
        assert "secret" not in str(reply.body) and "Traceback" not in str(reply.body)
        assert reply.headers["X-Request-ID"] in reply.body["message"]


async def test_request_id_and_security_headers(api: Api) -> None:
    reply = await api.get("/health", headers={"X-Request-ID": "abcdef1234567890"})
    assert reply.headers["X-Request-ID"] == "abcdef1234567890"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["X-Frame-Options"] == "DENY"
    generated = await api.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["X-Request-ID"] != "bad id with spaces"


async def test_cors_allow_list(api: Api) -> None:
    ok = await api.request("OPTIONS", "/api/auth/login", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    denied = await api.request("OPTIONS", "/api/auth/login", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in denied.headers
    plain = await api.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in plain.headers


async def test_metrics_count_requests(api: Api) -> None:
    await api.get("/health")
    reply = await api.get("/metrics")
    assert reply.status == 200
    assert 'http_requests_total{method="GET",route="/health",status="200"}' in reply.body


async def test_openapi_describes_every_route(api: Api, app_server) -> None:
    reply = await api.get("/openapi.json")
    assert reply.status == 200
    doc = reply.body
    assert doc["openapi"].startswith("3.")
    registered = set()
    for route in app_server.app.router.routes():
        info = route.get_info()
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "*", "OPTIONS") or path.startswith("/socket.io"):
            continue
        registered.add((route.method.lower(), path))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    missing = registered - documented
    assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"
    register = doc["paths"]["/api/auth/register"]["post"]
    assert "requestBody" in register and "202" in register["responses"]
    assert {"413", "415", "429"} <= set(register["responses"])
    for route in ("/api/auth/login", "/api/auth/refresh"):
        assert "401" in doc["paths"][route]["post"]["responses"], route
    docs = await api.get("/docs")
    assert docs.status == 200 and "/openapi.json" in docs.body


async def test_migration_created_constraints_and_append_only_ledger(database_url) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"users", "user_credits", "credit_transactions", "subscription_plans",
                "user_subscriptions", "avatars", "generated_content", "refresh_tokens",
                "auth_tokens", "stripe_events", "activity_events", "alembic_version"} <= tables
        plans = await conn.fetch("SELECT id, price_cents, credits_per_period, avatar_limit FROM subscription_plans ORDER BY sort_order")
        assert [tuple(p) for p in plans] == [("free", 0, 25, 1), ("starter", 999, 100, 3),
                                             ("pro", 2999, 500, 10), ("enterprise", 9999, 2000, 50)]
        user = await conn.fetchval(
            "INSERT INTO users (email, password_hash, date_of_birth) VALUES ($1, 'x', '1990-01-01') RETURNING id",
            "constraint-check@example.com")
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO user_credits (user_id, balance) VALUES ($1, -1)", user)
        await conn.execute("INSERT INTO user_credits (user_id, balance) VALUES ($1, 5)", user)
        await conn.execute(
            "INSERT INTO credit_transactions (user_id, amount, balance_after, type, idempotency_key) "
            "VALUES ($1, 5, 5, 'grant', $2)", user, f"check:{user}")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO credit_transactions (user_id, amount, balance_after, type, idempotency_key) "
                "VALUES ($1, 5, 10, 'grant', $2)", user, f"check:{user}")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE credit_transactions SET amount = 50 WHERE user_id = $1", user)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM credit_transactions WHERE user_id = $1", user)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO avatars (user_id, name, age, seed) VALUES ($1, 'kid', 17, 1)", user)
    finally:
        await conn.close()


def test_seed_is_idempotent(database_url) -> None:
    import asyncio

    from server.cli import _seed
    from server.config import Settings

    assert asyncio.run(_seed(Settings(_env_file=None, database_url=database_url))) == 4
    assert asyncio.run(_seed(Settings(_env_file=None, database_url=database_url))) == 4


def test_production_refuses_placeholder_jwt_secret() -> None:
    from pydantic import ValidationError

    from server.config import Settings

    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(_env_file=None, app_env="production", jwt_secret="change-me")
    with pytest.raises(ValidationError, match="JWT_SECRET"):
        Settings(_env_file=None, app_env="production", jwt_secret="short")
    ok = Settings(_env_file=None, app_env="production", jwt_secret="x" * 40)
    assert ok.app_env == "production"


def test_database_url_from_db_parts() -> None:
    from server.config import Settings

    s = Settings(_env_file=None, database_url=None, db_host="db", db_port=6543, db_name="lust", db_username="u",
                 db_password="p@ss word")
    assert s.sqlalchemy_url == "postgresql+asyncpg://u:p%40ss%20word@db:6543/lust"
    assert Settings(_env_file=None, database_url="postgres://a@b/c").sqlalchemy_url == "postgresql+asyncpg://a@b/c"


def test_models_and_migrations_agree(database_url) -> None:
    """Autogenerate against the migrated database finds nothing to change."""
    import asyncio

    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy.ext.asyncio import create_async_engine

    import db.models  # noqa: F401
    from db.base import Base
    from server.config import Settings

    async def diff() -> list:
        engine = create_async_engine(Settings(_env_file=None, database_url=database_url).sqlalchemy_url)
        async with engine.connect() as conn:
            result = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}),
                                              Base.metadata))
        await engine.dispose()
        return result

    assert asyncio.run(diff()) == []


def test_migrations_downgrade_and_upgrade_again(service_urls) -> None:
    import uuid

    from db.migrate import downgrade, upgrade
    from server.config import Settings
    from tests.conftest import _replace_database, admin_sql

    admin_url, _ = service_urls
    name = f"lustify_roundtrip_{uuid.uuid4().hex[:8]}"
    admin_sql(admin_url, f'CREATE DATABASE "{name}"')
    try:
        url = Settings(_env_file=None, database_url=_replace_database(admin_url, name)).sqlalchemy_url
        upgrade(url)
        downgrade(url, "base")
        upgrade(url)
    finally:
        admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_health_goes_503_when_redis_dies_and_recovers(settings, tmp_path) -> None:
    import time

    from server.embedded import EmbeddedRedis, free_port

    redis = EmbeddedRedis(tmp_path / "redis", port=free_port())
    server = await start_app(settings.model_copy(update={"redis_url": redis.url}))
    client = Api(str(server.make_url("")).rstrip("/"))
    try:
        assert (await client.get("/health")).status == 200
        redis.stop()
        started = time.monotonic()
        down = await client.get("/health")
        assert down.status == 503 and down.body["checks"]["redis"].startswith("error")
        assert time.monotonic() - started < 5
        redis = EmbeddedRedis(tmp_path / "redis", port=redis.port)
        for _ in range(50):
            back = await client.get("/health")
            if back.status == 200:
                break
            await asyncio.sleep(0.1)
        assert back.status == 200 and back.body["checks"]["redis"] == "ok"
    finally:
        await client.close()
        await server.close()
        redis.stop()


def test_seed_demo_creates_a_verified_account_once(settings) -> None:
    import subprocess
    import sys

    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_dsn,
           "REDIS_NAMESPACE": settings.redis_namespace, "DATA_DIR": str(settings.data_dir), "BCRYPT_ROUNDS": "4",
           "LOG_JSON": "false"}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "server.cli", "seed", "--demo"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "demo account: demo@lustify.local" in done.stdout

    async def check() -> tuple:
        conn = await asyncpg.connect(_asyncpg_dsn(settings.database_url))
        try:
            return await conn.fetchrow(
                "SELECT u.email_verified, c.balance, (SELECT count(*) FROM credit_transactions t "
                "WHERE t.user_id = u.id) AS rows FROM users u JOIN user_credits c ON c.user_id = u.id "
                "WHERE u.email = 'demo@lustify.local'")
        finally:
            await conn.close()

    row = asyncio.run(check())
    assert row["email_verified"] is True and row["balance"] == 525 and row["rows"] == 2
