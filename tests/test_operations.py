"""What an operator relies on: the worker healthcheck, and a backup that restores."""

from __future__ import annotations

import asyncio
import glob
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import _replace_database, admin_sql
from tests.support.api import Api, verified_user
from tests.support.flows import wait_for_content
from tests.support.nginx import ROOT
from tests.support.processes import WorkerProcess, settings_env

pytestmark = pytest.mark.slow


def _lustify(settings, *args: str, **overrides) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], env=settings_env(settings, **overrides),
                          capture_output=True, text=True, timeout=60, cwd="/tmp")


async def test_the_worker_healthcheck_follows_its_heartbeat(settings) -> None:
    assert (await asyncio.to_thread(_lustify, settings, "health", "worker")).returncode == 1
    async with WorkerProcess(settings):
        for _ in range(200):
            check = await asyncio.to_thread(_lustify, settings, "health", "worker")
            if check.returncode == 0:
                break
            await asyncio.sleep(0.1)
        assert check.returncode == 0, check.stdout + check.stderr
    # Stopped: it takes its heartbeat with it.
    assert (await asyncio.to_thread(_lustify, settings, "health", "worker")).returncode == 1


def _pg_tool(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        pytest.fail(f"{name} is not installed (postgresql-client)")
    return found[-1]


def _dump_arguments() -> list[str]:
    """The pg_dump options the compose backup profile uses, so the test restores that format."""
    entry = " ".join(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["db-backup"]["entrypoint"])
    command = entry.split("pg_dump", 1)[1].split(" -f ")[0].split()
    keep, skip = [], False
    for part in command:
        if skip:
            skip = False
            continue
        if part in ("-h", "-U", "-d"):
            skip = True
            continue
        keep.append(part)
    return keep


async def test_a_backup_restores_into_a_fresh_database_with_a_clean_ledger(
        api: Api, app_server, worker, settings, database_url, service_urls, tmp_path: Path) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "backup me"})
    assert (await wait_for_content(api, user, queued.body["id"]))["status"] == "completed"
    dump = tmp_path / "lustify.dump"
    assert _dump_arguments() == ["-Fc"]
    await asyncio.to_thread(
        subprocess.run, [_pg_tool("pg_dump"), database_url.replace("postgresql+asyncpg://", "postgresql://"),
                         *_dump_arguments(), "-f", str(dump)], check=True, capture_output=True, timeout=120)
    fresh = f"lustify_restore_{uuid.uuid4().hex[:8]}"
    admin_url, _ = service_urls
    await asyncio.to_thread(admin_sql, admin_url, f'CREATE DATABASE "{fresh}"')
    restored = _replace_database(admin_url, fresh)
    try:
        result = await asyncio.to_thread(
            subprocess.run, [_pg_tool("pg_restore"), "--no-owner", "--exit-on-error", "-d",
                             restored.replace("postgresql+asyncpg://", "postgresql://"), str(dump)],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        check = await asyncio.to_thread(_lustify, settings, "ledger", "check", database_url=restored)
        assert check.returncode == 0 and "ledger ok" in check.stdout, check.stdout + check.stderr
        migrated = await asyncio.to_thread(_lustify, settings, "migrate", database_url=restored)  # already at head: nothing to do
        assert migrated.returncode == 0, migrated.stderr
        import asyncpg

        conn = await asyncpg.connect(restored.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            row = await conn.fetchrow(
                "SELECT c.balance, c.event_seq, (SELECT count(*) FROM user_events e WHERE e.user_id = c.user_id) n, "
                "(SELECT status FROM generated_content WHERE id = $2) status "
                "FROM user_credits c WHERE c.user_id = $1", uuid.UUID(user.id), uuid.UUID(queued.body["id"]))
        finally:
            await conn.close()
        assert row["balance"] == 20 and row["status"] == "completed"
        assert row["n"] == row["event_seq"] > 0  # the event history came along, gapless
    finally:
        await asyncio.to_thread(admin_sql, admin_url, f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
