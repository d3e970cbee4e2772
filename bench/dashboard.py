"""Dashboard benchmark: /api/dashboard and 90d analytics through HTTP for a heavy user.

One user of 1,000 has 100,000 content rows and 200,000 ledger rows (spread over 120
days); the others have a little of everything. Prints the median time of each endpoint.
Target: both under 50 ms on this machine. Run: .venv/bin/python -m bench.dashboard
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from bench.harness import _dsn, now_ms, own_database, server_process, summary
from server.auth.tokens import issue_access_token

USERS = 1000
HOT_CONTENT = 100_000
HOT_LEDGER = 200_000
DAYS = 120
REQUESTS = int(os.environ.get("BENCH_REQUESTS", 200))


async def populate(url: str) -> uuid.UUID:
    conn = await asyncpg.connect(_dsn(url))
    rng = random.Random(1)
    now = datetime.now(UTC)
    users = [uuid.uuid4() for _ in range(USERS)]
    hot = users[0]
    await conn.copy_records_to_table(
        "users", columns=["id", "email", "password_hash", "date_of_birth", "email_verified"],
        records=[(u, f"bench-{i}@example.com", "x", datetime(1990, 1, 1).date(), True) for i, u in enumerate(users)])
    avatars = {u: [uuid.uuid4() for _ in range(3)] for u in users}
    await conn.copy_records_to_table(
        "avatars", columns=["id", "user_id", "name", "age", "seed", "status"],
        records=[(a, u, f"Avatar {j}", 25, rng.randrange(2**31), "ready")
                 for u in users for j, a in enumerate(avatars[u])])

    def when() -> datetime:
        return now - timedelta(seconds=rng.randrange(DAYS * 86400))

    content, ledger, balances = [], [], {}
    for u in users:
        n_content = HOT_CONTENT if u == hot else 20
        n_grants = (HOT_LEDGER - HOT_CONTENT) if u == hot else 20
        for _ in range(n_grants):
            ledger.append((uuid.uuid4(), u, 5, 0, "grant", f"g:{uuid.uuid4()}", when()))
        for _ in range(n_content):
            cid, at = uuid.uuid4(), when()
            kind = "video" if rng.random() < 0.2 else "image"
            status = rng.choices(["completed", "failed", "canceled"], [90, 7, 3])[0]
            content.append((cid, u, rng.choice(avatars[u]), kind, status, "bench prompt", 5, at, at))
            ledger.append((uuid.uuid4(), u, -5, 0, "spend", f"content:{cid}:charge", at))
        balances[u] = 5 * n_grants - 5 * n_content
    await conn.copy_records_to_table(
        "generated_content",
        columns=["id", "user_id", "avatar_id", "type", "status", "prompt", "credits_cost", "created_at", "updated_at"],
        records=content)
    await conn.copy_records_to_table(
        "credit_transactions",
        columns=["id", "user_id", "amount", "balance_after", "type", "idempotency_key", "created_at"],
        records=ledger)
    await conn.copy_records_to_table("user_credits", columns=["user_id", "balance"],
                                     records=[(u, max(b, 0)) for u, b in balances.items()])
    await conn.execute("VACUUM ANALYZE")
    await conn.close()
    return hot


async def measure(base: str, token: str, path: str) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    samples = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for i in range(REQUESTS + 20):
            started = now_ms()
            async with http.get(base + path) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            if i >= 20:  # warm-up excluded
                samples.append(now_ms() - started)
    return samples


async def main() -> int:
    async with own_database("lustify_bench_dashboard") as settings:
        started = now_ms()
        hot = await populate(settings.sqlalchemy_url)
        print(f"populated {USERS} users, hot user: {HOT_CONTENT} content + {HOT_LEDGER} ledger rows "
              f"({(now_ms() - started) / 1000:.1f} s)")
        token = issue_access_token(user_id=hot, token_version=0,
                                   secret=settings.jwt_secret.get_secret_value(), ttl=3600)
        async with server_process(settings) as base:
            results = {}
            for label, path in (("GET /api/dashboard", "/api/dashboard"),
                                ("GET /api/dashboard/analytics?timeframe=90d", "/api/dashboard/analytics?timeframe=90d"),
                                ("GET /api/dashboard/quick-stats", "/api/dashboard/quick-stats")):
                samples = await measure(base, token, path)
                results[label] = sorted(samples)[len(samples) // 2]
                print(f"{label}: {summary(samples)}")
    ok = all(v < 50 for v in results.values())
    print("target (median < 50 ms):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
