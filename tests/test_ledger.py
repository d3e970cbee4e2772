"""The credits ledger under real concurrency: many PostgreSQL connections released at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from db.session import transaction
from server.credits import ledger
from server.credits.audit import find_drift
from server.errors import Conflict, InsufficientCredits, ValidationFailed
from server.resources import Resources, open_resources
from tests.conftest import _asyncpg_dsn
from tests.support.events import history


@pytest.fixture
async def res(settings) -> AsyncIterator[Resources]:
    # 50 sessions at once, each with a connection of its own.
    async with open_resources(settings.model_copy(update={"db_pool_size": 30})) as resources:
        yield resources


@pytest.fixture
async def db(database_url) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def new_user(db: asyncpg.Connection) -> uuid.UUID:
    return await db.fetchval(
        "INSERT INTO users (email, password_hash, date_of_birth) VALUES ($1, 'x', '1990-01-01') RETURNING id",
        f"ledger-{uuid.uuid4().hex}@example.com")


async def all_at_once(res: Resources, n: int, work: Callable[[Any, int], Awaitable[Any]]) -> list[Any]:
    """Run `work` in n transactions, each holding its own connection, released together."""
    barrier = asyncio.Barrier(n)

    async def one(i: int) -> Any:
        async with transaction(res.sessionmaker) as session:
            await session.connection()
            await session.execute(text("SELECT 1"))  # the connection is really checked out
            await barrier.wait()
            return await work(session, i)

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


async def assert_consistent(db: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """balance == sum(ledger), never negative, and every row's balance_after is its running sum."""
    rows = await db.fetch("SELECT amount, balance_after FROM credit_transactions WHERE user_id = $1 "
                          "ORDER BY created_at, id", user_id)
    running = 0
    for row in rows:
        running += row["amount"]
        assert row["balance_after"] == running >= 0, rows
    balance = await db.fetchval("SELECT balance FROM user_credits WHERE user_id = $1", user_id)
    assert balance == running
    return balance


async def test_fifty_concurrent_spends_never_overdraw(res: Resources, db) -> None:
    user = await new_user(db)
    async with transaction(res.sessionmaker) as session:
        await ledger.grant(session, user_id=user, amount=100, key=f"seed:{user}")

    async def spend(session, i: int):
        return await ledger.spend(session, user_id=user, amount=7, key=f"spend:{user}:{i}")

    results = await all_at_once(res, 50, spend)
    spent = [r for r in results if isinstance(r, ledger.LedgerEntry)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert len(spent) == 100 // 7 and len(refused) == 50 - 100 // 7, results
    assert all(r.created for r in spent)
    assert sorted(r.balance_after for r in spent) == list(range(100 - 7 * 14, 100, 7))
    assert all(r.required == 7 and 0 <= r.balance < 7 for r in refused)
    assert await assert_consistent(db, user) == 100 - 7 * 14
    credits = await db.fetchrow("SELECT lifetime_granted, lifetime_spent FROM user_credits WHERE user_id = $1", user)
    assert dict(credits) == {"lifetime_granted": 100, "lifetime_spent": 98}
    assert await db.fetchval("SELECT count(*) FROM activity_events WHERE user_id = $1 AND type = 'credits.spent'",
                             user) == 14


async def test_concurrent_spends_across_users_keep_every_balance(res: Resources, db) -> None:
    users = [await new_user(db) for _ in range(5)]
    for user in users:
        async with transaction(res.sessionmaker) as session:
            await ledger.grant(session, user_id=user, amount=30, key=f"seed:{user}")

    async def spend(session, i: int):
        return await ledger.spend(session, user_id=users[i % 5], amount=4, key=f"multi:{users[i % 5]}:{i}")

    results = await all_at_once(res, 50, spend)
    assert sum(isinstance(r, ledger.LedgerEntry) for r in results) == 5 * (30 // 4)
    for user in users:
        assert await assert_consistent(db, user) == 30 - 4 * (30 // 4)


async def test_one_key_twenty_times_at_once_moves_once(res: Resources, db) -> None:
    user = await new_user(db)
    key = f"invoice:in_{uuid.uuid4().hex}:grant"

    async def grant(session, i: int):
        return await ledger.grant(session, user_id=user, amount=500, key=key, reason="Pro plan credits")

    results = await all_at_once(res, 20, grant)
    assert all(isinstance(r, ledger.LedgerEntry) for r in results), results
    assert len({r.id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert await db.fetchval("SELECT count(*) FROM credit_transactions WHERE idempotency_key = $1", key) == 1
    assert await assert_consistent(db, user) == 500

    charge_key = f"content:{uuid.uuid4()}:charge"

    async def spend(session, i: int):
        return await ledger.spend(session, user_id=user, amount=15, key=charge_key)

    results = await all_at_once(res, 20, spend)
    assert len({r.id for r in results}) == 1 and sum(r.created for r in results) == 1
    assert await assert_consistent(db, user) == 485


async def test_concurrent_refunds_refund_once(res: Resources, db) -> None:
    user = await new_user(db)
    content = uuid.uuid4()
    async with transaction(res.sessionmaker) as session:
        await ledger.grant(session, user_id=user, amount=40, key=f"seed:{user}")
        charge = await ledger.spend(session, user_id=user, amount=30, key=f"content:{content}:charge",
                                    reference_id=str(content))

    async def refund(session, i: int):
        # Half retry the same refund, half arrive under keys of their own (e.g. a sweep and a job).
        key = f"content:{content}:refund" if i % 2 else f"content:{content}:refund:{i}"
        return await ledger.refund(session, user_id=user, charge_key=f"content:{content}:charge",
                                   key=key, reason="generation failed")

    results = await all_at_once(res, 20, refund)
    assert all(isinstance(r, ledger.LedgerEntry) for r in results), results
    assert len({r.id for r in results}) == 1 and sum(r.created for r in results) == 1
    [refund_row] = await db.fetch("SELECT amount, refund_of, reference_id FROM credit_transactions "
                                  "WHERE user_id = $1 AND type = 'refund'", user)
    assert refund_row["amount"] == 30 == -charge.amount  # exactly the charge, never more
    assert refund_row["refund_of"] == charge.id and refund_row["reference_id"] == str(content)
    assert await assert_consistent(db, user) == 40
    credits = await db.fetchrow("SELECT lifetime_granted, lifetime_spent FROM user_credits WHERE user_id = $1", user)
    assert dict(credits) == {"lifetime_granted": 40, "lifetime_spent": 0}


async def test_refund_needs_a_charge_of_this_user(res: Resources, db) -> None:
    owner, other = await new_user(db), await new_user(db)
    async with transaction(res.sessionmaker) as session:
        await ledger.grant(session, user_id=owner, amount=10, key=f"seed:{owner}")
        await ledger.spend(session, user_id=owner, amount=5, key=f"charge:{owner}")
    async with transaction(res.sessionmaker) as session:
        assert await ledger.refund(session, user_id=other, charge_key=f"charge:{owner}",
                                   key=f"refund:{owner}") is None
        assert await ledger.refund(session, user_id=owner, charge_key="charge:nothing",
                                   key="refund:nothing") is None
        with pytest.raises(ValueError):
            await ledger.refund(session, user_id=owner, charge_key=f"charge:{owner}", key=f"charge:{owner}")
    assert await assert_consistent(db, owner) == 5
    assert await db.fetchval("SELECT count(*) FROM credit_transactions WHERE user_id = $1", other) == 0


async def test_refused_movements_change_nothing(res: Resources, db) -> None:
    user, other = await new_user(db), await new_user(db)
    async with transaction(res.sessionmaker) as session:
        await ledger.grant(session, user_id=user, amount=12, key=f"seed:{user}")
    with pytest.raises(InsufficientCredits) as short:
        async with transaction(res.sessionmaker) as session:
            await ledger.spend(session, user_id=user, amount=13, key=f"too-much:{user}")
    assert short.value.status == 402 and short.value.details == [{"required": 13, "balance": 12}]
    with pytest.raises(Conflict):  # a key belongs to one user and one kind of movement
        async with transaction(res.sessionmaker) as session:
            await ledger.spend(session, user_id=other, amount=1, key=f"seed:{user}")
    with pytest.raises(Conflict):
        async with transaction(res.sessionmaker) as session:
            await ledger.spend(session, user_id=user, amount=1, key=f"seed:{user}")
    for bad in (0, -5, True, 2.5):
        with pytest.raises(ValidationFailed):
            async with transaction(res.sessionmaker) as session:
                await ledger.spend(session, user_id=user, amount=bad, key=f"bad:{user}")
    assert await assert_consistent(db, user) == 12
    assert await db.fetchval("SELECT count(*) FROM credit_transactions WHERE user_id = $1", user) == 1
    assert await db.fetchval("SELECT count(*) FROM activity_events WHERE user_id = $1", user) == 1


async def test_each_movement_publishes_one_credits_event(res: Resources, db) -> None:
    user = await new_user(db)
    for _ in range(2):  # the repeat publishes nothing
        async with transaction(res.sessionmaker) as session:
            await ledger.grant(session, user_id=user, amount=20, key=f"seed:{user}")
            await ledger.spend(session, user_id=user, amount=5, key=f"use:{user}")
    events = await history(res, user)
    credits = [payload for name, payload in events if name == "credits.updated"]
    assert [(c["balance"], c["delta"]) for c in credits] == [(20, 20), (15, -5)]
    activity = [payload["activity"] for name, payload in events if name == "activity"]
    assert [a["type"] for a in activity] == ["credits.granted", "credits.spent"]
    assert activity[1]["data"]["transaction_id"] == credits[1]["transaction_id"]


async def test_audit_finds_no_drift_after_concurrent_movements_and_finds_real_drift(res: Resources, db) -> None:
    users = [await new_user(db) for _ in range(3)]
    for user in users:
        async with transaction(res.sessionmaker) as session:
            await ledger.grant(session, user_id=user, amount=100, key=f"seed:{user}")

    async def mixed(session, i: int) -> None:
        user = users[i % 3]
        await ledger.spend(session, user_id=user, amount=3, key=f"mixed:{user}:{i}")
        if i % 2:
            await ledger.refund(session, user_id=user, charge_key=f"mixed:{user}:{i}", key=f"mixed:{user}:{i}:back")

    outcomes = await all_at_once(res, 30, mixed)
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    async with transaction(res.sessionmaker) as session:
        drift = [row for row in await find_drift(session) if row["user_id"] in users]
    assert drift == [] and [await assert_consistent(db, u) for u in users] == [85, 85, 85]
    # The audit is not blind: a cached balance moved outside the ledger is reported.
    await db.execute("UPDATE user_credits SET balance = balance + 1 WHERE user_id = $1", users[0])
    async with transaction(res.sessionmaker) as session:
        drift = [row for row in await find_drift(session) if row["user_id"] in users]
    await db.execute("UPDATE user_credits SET balance = balance - 1 WHERE user_id = $1", users[0])
    assert [(row["user_id"], row["balance"], row["total"]) for row in drift] == [(users[0], 86, 85)]


def test_a_refund_key_is_its_charge_key_with_refund_for_charge() -> None:
    # Refund rows already stored carry these keys: a new spelling would refund a charge twice.
    avatar, thumbnail = uuid.uuid4(), uuid.uuid4()
    assert ledger.refund_key_for(f"avatar:{avatar}:charge") == f"avatar:{avatar}:refund"
    assert (ledger.refund_key_for(f"avatar:{avatar}:thumbnail:{thumbnail}:charge")
            == f"avatar:{avatar}:thumbnail:{thumbnail}:refund")
    assert ledger.refund_key_for(f"content:{avatar}:charge:2") == f"content:{avatar}:refund:2"
    with pytest.raises(ValueError):
        ledger.refund_key_for(f"content:{avatar}:charged")
