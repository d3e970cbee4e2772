"""Verified users with credits written straight into a database, the ledger equal to the balance."""

from __future__ import annotations

import uuid

import asyncpg


async def insert_funded_users(dsn: str, count: int, *, credits: int, label: str,
                              plan: str | None = "enterprise") -> list[uuid.UUID]:
    """`count` users granted `credits` each (and on `plan` for 30 days unless None); their ids."""
    conn = await asyncpg.connect(dsn)
    users = [uuid.uuid4() for _ in range(count)]
    try:
        async with conn.transaction():
            for i, user in enumerate(users):
                await conn.execute("INSERT INTO users (id, email, password_hash, date_of_birth, email_verified) "
                                   "VALUES ($1, $2, 'x', '1990-01-01', true)", user,
                                   f"{label}-{i}-{user.hex[:6]}@example.com")
                await conn.execute("INSERT INTO user_credits (user_id, balance, lifetime_granted) "
                                   "VALUES ($1, $2, $2)", user, credits)
                await conn.execute("INSERT INTO credit_transactions (user_id, amount, balance_after, type, "
                                   "idempotency_key) VALUES ($1, $2, $2, 'grant', $3)", user, credits,
                                   f"{label}:{user}")
                if plan is not None:
                    await conn.execute("INSERT INTO user_subscriptions (user_id, plan_id, status, "
                                       "current_period_start, current_period_end) VALUES ($1, $2, 'active', "
                                       "now(), now() + interval '30 days')", user, plan)
    finally:
        await conn.close()
    return users
