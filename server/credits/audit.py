"""`lustify ledger check`: every cached balance must equal the sum of its ledger."""

from __future__ import annotations

import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from server.config import Settings

_DRIFT = text("""
SELECT coalesce(c.user_id, t.user_id) AS user_id, c.balance, t.total
FROM user_credits c
FULL JOIN (
    SELECT user_id, sum(amount) AS total FROM credit_transactions GROUP BY user_id
) t ON t.user_id = c.user_id
WHERE c.balance IS DISTINCT FROM coalesce(t.total, 0) OR c.balance < 0
""")


async def find_drift(session: AsyncSession) -> list[dict]:
    """Users whose balance differs from sum(ledger) (or is negative)."""
    return [dict(r._mapping) for r in await session.execute(_DRIFT)]


async def run_ledger_check(settings: Settings) -> int:
    from db.session import make_engine, make_sessionmaker, transaction

    engine = make_engine(settings.sqlalchemy_url, pool_size=1)
    try:
        async with transaction(make_sessionmaker(engine)) as session:
            await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            drift = await find_drift(session)
            users = (await session.execute(text("SELECT count(*) FROM user_credits"))).scalar_one()
    finally:
        await engine.dispose()
    if not drift:
        print(f"ledger ok: {users} balances equal the sum of their ledger")
        return 0
    for row in drift:
        print(f"DRIFT user {row['user_id']}: balance={row['balance']} ledger_sum={row['total']}",
              file=sys.stderr)
    print(f"ledger check failed for {len(drift)} user(s)", file=sys.stderr)
    return 1
