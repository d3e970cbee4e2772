"""Generation pipeline benchmark with the local provider at zero delay.

Measures enqueue -> job start latency (created_at -> started_at, both stamped by the
database) and generations completed per second end to end (HTTP POST -> completed row),
with 1 and with 2 worker processes; `lustify ledger check` must pass at the end.
Run: .venv/bin/python -m bench.generation
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import aiohttp
import asyncpg

from bench.harness import _dsn, now_ms, own_database, server_process, settings_env, summary
from server.auth.tokens import issue_access_token
from tests.support.funded_users import insert_funded_users

GENERATIONS = int(os.environ.get("BENCH_GENERATIONS", 200))
USERS = 20


async def make_users(url: str, count: int) -> list[uuid.UUID]:
    """Verified Enterprise users (its cap of 200 in progress never stops the benchmark) with enough credits."""
    return await insert_funded_users(_dsn(url), count, credits=5 * GENERATIONS * 2, label="gen")


async def run_round(base: str, settings, users: list[uuid.UUID], workers: int) -> dict[str, float]:
    env = settings_env(settings, LOCAL_AI_DELAY_MS="0")
    procs = [subprocess.Popen([sys.executable, "-m", "server.cli", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    await asyncio.sleep(3)  # workers connected and polling
    secret = settings.jwt_secret.get_secret_value()
    tokens = [issue_access_token(user_id=u, token_version=0, secret=secret, ttl=3600) for u in users]
    conn = await asyncpg.connect(_dsn(settings.sqlalchemy_url))
    ids: list[str] = []
    try:
        started = time.perf_counter()
        async with aiohttp.ClientSession() as http:
            async def submit(i: int) -> None:
                headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
                async with http.post(base + "/api/content/generate/image", headers=headers,
                                     json={"prompt": f"benchmark image {i}"}) as resp:
                    assert resp.status == 202, await resp.text()
                    ids.append((await resp.json())["id"])

            for batch in range(0, GENERATIONS, 20):
                await asyncio.gather(*(submit(i) for i in range(batch, min(batch + 20, GENERATIONS))))
        while True:
            done = await conn.fetchval("SELECT count(*) FROM generated_content WHERE id = ANY($1::uuid[]) "
                                       "AND status IN ('completed', 'failed')", ids)
            if done == len(ids):
                break
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        rows = await conn.fetch("SELECT status, extract(epoch FROM started_at - created_at) * 1000 AS wait_ms "
                                "FROM generated_content WHERE id = ANY($1::uuid[])", ids)
    finally:
        await conn.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    failed = sum(1 for r in rows if r["status"] != "completed")
    waits = [float(r["wait_ms"]) for r in rows]
    print(f"{workers} worker(s): {len(ids)} generations in {elapsed:.2f} s = {len(ids) / elapsed:.1f}/s, "
          f"failed={failed}; enqueue->start {summary(waits)}")
    return {"rate": len(ids) / elapsed, "failed": failed}


async def idle_start_latency(base: str, settings, user: uuid.UUID) -> None:
    """One generation at a time on an idle worker: how soon does the job start?"""
    env = settings_env(settings, LOCAL_AI_DELAY_MS="0")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "worker"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(3)
    token = issue_access_token(user_id=user, token_version=0, secret=settings.jwt_secret.get_secret_value(), ttl=3600)
    conn = await asyncpg.connect(_dsn(settings.sqlalchemy_url))
    waits = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            for i in range(40):
                async with http.post(base + "/api/content/generate/image", json={"prompt": f"idle {i}"}) as resp:
                    content_id = (await resp.json())["id"]
                while True:
                    row = await conn.fetchrow("SELECT status, extract(epoch FROM started_at - created_at) * 1000 AS w "
                                              "FROM generated_content WHERE id = $1::uuid", content_id)
                    if row["status"] in ("completed", "failed"):
                        waits.append(float(row["w"]))
                        break
                    await asyncio.sleep(0.01)
    finally:
        await conn.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(f"idle worker, enqueue->start: {summary(waits)}")


async def main() -> int:
    async with own_database("lustify_bench_generation") as settings:
        settings = settings.model_copy(update={"data_dir": tempfile.mkdtemp(prefix="lustify-bench-")})
        users = await make_users(settings.sqlalchemy_url, USERS)
        async with server_process(settings) as base:
            began = now_ms()
            await idle_start_latency(base, settings, users[0])
            one = await run_round(base, settings, users, 1)
            two = await run_round(base, settings, users, 2)
            print(f"scaling 1 -> 2 workers: {two['rate'] / one['rate']:.2f}x ({(now_ms() - began) / 1000:.0f} s total)")
        check = subprocess.run([sys.executable, "-m", "server.cli", "ledger", "check"],
                               env=settings_env(settings), capture_output=True, text=True)
        print(check.stdout.strip() or check.stderr.strip())
        return check.returncode


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
