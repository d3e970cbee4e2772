"""Does hostile load hold the event loop? /health latency, probed from a process of its own,
while 20 clients send maximum-size bodies as fast as they can, 20 logins run at once at
bcrypt cost 12 (with the old pool of 6 hashing threads and the new one of cores - 1), or 12
clients update an avatar with the most text the content rules must read.

    .venv/bin/python -m bench.hostile_load [--seconds 15]

tests/test_hostile_load.py runs the same scenarios with generous bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import uuid

import aiohttp
import asyncpg

from bench.harness import _dsn, own_database, server_process, summary

AUTH_MAX, JSON_MAX, WEBHOOK_MAX = 16 * 1024, 64 * 1024, 512 * 1024
JSON = {"Content-Type": "application/json"}


def worst_body(size: int) -> bytes:
    """The costliest JSON of `size` bytes to parse and check: one array of small integers."""
    return b"[" + b"1," * ((size - 3) // 2) + b"1]"


async def probe_into(url: str, seconds: float, samples: list[float], interval: float = 0.01) -> None:
    """GET /health every `interval` for `seconds`, appending each latency in ms."""
    async with aiohttp.ClientSession() as http:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with http.get(url + "/health") as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            samples.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(interval)


async def probe_in_another_process(url: str, seconds: float) -> asyncio.subprocess.Process:
    """Start the prober; `collect` reads its samples. Its own process: the load generator's
    event loop must not delay the probe's own timing."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.hostile_load", "--probe", url, "--seconds", str(seconds),
        stdout=asyncio.subprocess.PIPE)


async def collect(proc: asyncio.subprocess.Process) -> list[float]:
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    return json.loads(out)


async def new_account(url: str, password: str) -> tuple[str, str]:
    """(email, access token) of a fresh account."""
    email = f"load-{uuid.uuid4().hex[:10]}@example.com"
    async with aiohttp.ClientSession() as http:
        body = {"email": email, "password": password, "date_of_birth": "1990-01-01"}
        async with http.post(url + "/api/auth/register", json=body) as resp:
            assert resp.status == 202, await resp.text()
        async with http.post(url + "/api/auth/login", json={"email": email, "password": password}) as resp:
            assert resp.status == 200, await resp.text()
            return email, (await resp.json())["access_token"]


async def flood_bodies(url: str, token: str, *, clients: int, seconds: float,
                       only: str | None = None) -> dict[str, int]:
    """`clients` loops, each sending the largest body each route takes, back to back.

    Every body is refused (400), but only after it was read, parsed and checked in full:
    the login and generate bodies are arrays of integers, the webhook's carries no valid
    signature (checked over its 512 KB before anything parses it).
    """
    targets = [
        ("/api/auth/login", worst_body(AUTH_MAX), JSON),
        ("/api/content/generate/image", worst_body(JSON_MAX), {**JSON, "Authorization": f"Bearer {token}"}),
        ("/api/subscriptions/webhook", worst_body(WEBHOOK_MAX),
         {**JSON, "Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"}),
        ("/api/auth/refresh", b" " * (50 * 1024 * 1024), JSON),  # over every cap: 413 unread
    ]
    targets = [t for t in targets if only is None or t[0] == only]
    statuses: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        async with aiohttp.ClientSession() as http:
            turn = index
            while time.perf_counter() < deadline:
                path, body, headers = targets[turn % len(targets)]
                turn += 1
                try:
                    async with http.post(url + path, data=body, headers=headers) as resp:
                        await resp.read()
                        key = f"{path} {resp.status}"
                except aiohttp.ClientError:  # a 413 may close the connection mid-upload
                    key = f"{path} closed"
                statuses[key] = statuses.get(key, 0) + 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return statuses


async def concurrent_logins(url: str, email: str, password: str, *, count: int) -> float:
    """`count` logins at once; seconds until the last one answered."""
    async with aiohttp.ClientSession() as http:
        async def login() -> None:
            async with http.post(url + "/api/auth/login", json={"email": email, "password": password}) as resp:
                assert resp.status == 200, await resp.text()

        started = time.perf_counter()
        await asyncio.gather(*(login() for _ in range(count)))
        return time.perf_counter() - started


async def bodies_scenario(url: str, *, seconds: float,
                          only: str | None = None) -> tuple[list[float], dict[str, int]]:
    _, token = await new_account(url, "a long password")
    prober = await probe_in_another_process(url, seconds)
    statuses = await flood_bodies(url, token, clients=20, seconds=seconds, only=only)
    return await collect(prober), statuses


async def logins_scenario(url: str, *, rounds: int = 2) -> tuple[list[float], float]:
    """/health during `rounds` bursts of 20 concurrent logins; and logins per second."""
    email, _ = await new_account(url, "a long password")
    prober = await probe_in_another_process(url, 600)
    elapsed = 0.0
    for _ in range(rounds):
        elapsed += await concurrent_logins(url, email, "a long password", count=20)
    prober.terminate()  # stops it mid-sleep; the samples so far are printed on SIGTERM
    return await collect(prober), 20 * rounds / elapsed


def largest_avatar_text() -> dict:
    """The most text an avatar update can carry (~11 KB), all of which the rules must read."""
    words = "a quiet painter by the sea " * 80
    return {"description": words[:2000], "personality": words[:1000], "style": words[:500],
            "appearance": {f"trait {n:02d} " + "x" * 40: words[:200] for n in range(30)}}


async def screening_scenario(url: str, database_url: str, *, seconds: float,
                             clients: int = 12) -> tuple[list[float], dict[str, int]]:
    """/health while `clients` loops PUT the largest avatar text, back to back."""
    email, token = await new_account(url, "a long password")
    conn = await asyncpg.connect(_dsn(database_url))
    await conn.execute("UPDATE users SET email_verified = true WHERE email = $1", email)
    await conn.close()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/avatars", json={"name": "Mara", "age": 30}, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
            avatar = (await resp.json())["id"]
    body = largest_avatar_text()
    statuses: dict[str, int] = {}
    prober = await probe_in_another_process(url, seconds)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        async with aiohttp.ClientSession() as http:
            while time.perf_counter() < deadline:
                async with http.put(f"{url}/api/avatars/{avatar}", json=body, headers=headers) as resp:
                    await resp.read()
                    statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return await collect(prober), statuses


async def main(seconds: float) -> None:
    async with own_database("bench_hostile") as settings:
        async with server_process(settings) as url:
            samples, statuses = await bodies_scenario(url, seconds=seconds)
            print(f"/health while 20 clients send max-size bodies ({seconds:.0f} s): {summary(samples)}")
            print("  bodies answered:", dict(sorted(statuses.items())))
        async with server_process(settings, RATE_LIMIT_ENABLED="false") as url:
            samples, statuses = await screening_scenario(url, settings.sqlalchemy_url, seconds=seconds)
            print(f"/health while 12 clients update an avatar with ~11 KB of text ({seconds:.0f} s): "
                  f"{summary(samples)}; answered {statuses}")
        for threads in ("6", "0"):
            label = "6 threads (before: asyncio.to_thread's pool)" if threads == "6" else "cores - 1 (now)"
            async with server_process(settings, BCRYPT_ROUNDS="12", PASSWORD_HASH_THREADS=threads) as url:
                samples, rate = await logins_scenario(url)
                print(f"/health during 2 x 20 concurrent logins at cost 12, {label}: {summary(samples)}; "
                      f"{rate:.1f} logins/s")


def _probe_main(url: str, seconds: float) -> None:
    """The prober process: samples so far go to stdout at the end, or on SIGTERM."""
    import signal

    samples: list[float] = []

    async def run() -> None:
        task = asyncio.ensure_future(probe_into(url, seconds, samples))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    print(json.dumps(samples))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--probe", metavar="URL")
    args = parser.parse_args()
    if args.probe:
        _probe_main(args.probe, args.seconds)
    else:
        asyncio.run(main(args.seconds))
