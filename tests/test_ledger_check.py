"""`lustify ledger check` in a throwaway database of this test's own: clean exits 0, drift
exits non-zero and names each user whose balance is not the sum of their ledger."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from db.migrate import upgrade
from db.session import transaction
from server.config import Settings
from server.credits import ledger
from server.resources import open_resources
from tests.conftest import _asyncpg_dsn, _replace_database

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def throwaway_db(service_urls):
    admin_url, _ = service_urls
    name = f"lustify_ledgercheck_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_asyncpg_dsn(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _replace_database(admin_url, name)
    try:
        await asyncio.to_thread(upgrade, Settings(_env_file=None, database_url=url).sqlalchemy_url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


async def ledger_check(database_url: str) -> Outcome:
    """Run the real command in a process of its own against `database_url`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_"))}
    env.update(DATABASE_URL=database_url, LOG_JSON="false")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "ledger", "check", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return Outcome(proc.returncode or 0, out.decode(), err.decode())


async def test_ledger_check_passes_clean_books_and_names_drifting_users(
        throwaway_db, settings) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(throwaway_db))
    try:
        users = [await conn.fetchval(
            "INSERT INTO users (email, password_hash, date_of_birth) VALUES ($1, 'x', '1990-01-01') RETURNING id",
            f"check-{i}@example.com") for i in range(4)]
        async with open_resources(settings.model_copy(update={"database_url": throwaway_db})) as res:
            for i, user in enumerate(users):
                async with transaction(res.sessionmaker) as session:
                    await ledger.grant(session, user_id=user, amount=50, key=f"seed:{user}")
                    await ledger.spend(session, user_id=user, amount=10 + i, key=f"use:{user}")

        clean = await ledger_check(throwaway_db)
        assert clean.returncode == 0, clean.stderr
        assert "ledger ok: 4 balances" in clean.stdout

        # Drift made the ways it could happen: a balance moved without a ledger row, a ledger
        # row written without moving the balance, and ledger rows with no balance row at all.
        await conn.execute("UPDATE user_credits SET balance = balance + 5 WHERE user_id = $1", users[0])
        await conn.execute(
            "INSERT INTO credit_transactions (user_id, amount, balance_after, type, idempotency_key) "
            "VALUES ($1, 7, 47, 'grant', 'drift:1')", users[1])
        await conn.execute("DELETE FROM user_credits WHERE user_id = $1", users[2])

        drift = await ledger_check(throwaway_db)
        assert drift.returncode != 0
        assert f"DRIFT user {users[0]}: balance=45 ledger_sum=40" in drift.stderr
        assert f"DRIFT user {users[1]}: balance=39 ledger_sum=46" in drift.stderr
        assert f"DRIFT user {users[2]}: balance=None ledger_sum=38" in drift.stderr
        assert str(users[3]) not in drift.stderr
        assert "ledger check failed for 3 user(s)" in drift.stderr
    finally:
        await conn.close()
