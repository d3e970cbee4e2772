"""REST benchmark: authenticated GET /api/avatars?page=1&limit=20, this app vs Express 5.

1,000 users with 50 avatars each in a database of its own; wrk (Debian package) at 64
connections with a random user's token per request; one server process each, started
and stopped here, loopback only. Prints req/s and latency of both and their ratio.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/rest.py [--duration 15]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.auth.tokens import issue_access_token  # noqa: E402
from server.config import Settings  # noqa: E402

PEER = ROOT / "bench" / "peers" / "express-avatars"
PATH = "/api/avatars?page=1&limit=20"
USERS, AVATARS_PER_USER = 1000, 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_database(url: str, name: str) -> str:
    head, _, tail = url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{name}" + (f"?{tail}" if tail else "")


async def build_data(url: str) -> list[tuple[uuid.UUID, int]]:
    """Users and avatars through COPY; returns (user id, token version) pairs."""
    conn = await asyncpg.connect(url)
    try:
        now = datetime.now(UTC)
        users = [(uuid.uuid4(), f"bench-{i}@example.com", "x" * 60, date(1990, 1, 1), True, 0)
                 for i in range(USERS)]
        await conn.copy_records_to_table(
            "users", records=users,
            columns=["id", "email", "password_hash", "date_of_birth", "email_verified", "token_version"])
        profile = json.dumps({"identity": "A 30-year-old adult with copper hair and green eyes",
                              "physical_traits": {"hair": "copper", "eyes": "green", "build": "athletic"},
                              "style": "streetwear", "personality": "warm, witty", "provider": "local"})
        avatars = []
        for user_id, *_ in users:
            for n in range(AVATARS_PER_USER):
                avatar_id = uuid.uuid4()
                avatars.append((avatar_id, user_id, f"Avatar {n}", f"Character number {n}", 20 + n % 40,
                                json.dumps({"hair": "copper"}), "warm", "streetwear", profile, n * 7919,
                                "ready", f"avatars/{user_id}/thumbnail_{avatar_id}.jpg",
                                now - timedelta(minutes=n), now - timedelta(minutes=n)))
        await conn.copy_records_to_table(
            "avatars", records=avatars,
            columns=["id", "user_id", "name", "description", "age", "appearance", "personality", "style",
                     "profile", "seed", "status", "thumbnail_key", "created_at", "updated_at"])
        await conn.execute("ANALYZE")
        return [(u[0], u[5]) for u in users]
    finally:
        await conn.close()


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def fetch(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


def wrk(url: str, script: Path, *, seconds: int, connections: int) -> dict:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": latency.get("50"), "p99": latency.get("99"),
            "non_2xx": int(errors.group(1)) if errors else 0}


def lua_script(tokens: list[str], path: Path) -> None:
    body = "tokens = {\n" + ",\n".join(f'"{t}"' for t in tokens) + "\n}\n"
    body += (f'request = function()\n  local t = tokens[math.random(#tokens)]\n'
             f'  return wrk.format("GET", "{PATH}", {{["Authorization"] = "Bearer " .. t}})\nend\n')
    path.write_text(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating measured runs per server")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the Python server into FILE (collapsed stacks)")
    args = parser.parse_args()
    for tool in ("wrk", "node", "npm"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (apt-get install -y wrk nodejs npm)")
    if not (PEER / "node_modules").exists():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER, check=True)

    admin = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"lustify_bench_{uuid.uuid4().hex[:8]}"
    db_url = with_database(admin, name)
    secret = secrets.token_hex(32)
    work = Path(tempfile.mkdtemp(prefix="lustify-bench-"))
    procs: list[subprocess.Popen] = []

    async def admin_sql(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_sql(f'CREATE DATABASE "{name}"'))
    try:
        from db.migrate import upgrade
        from server.cli import _seed

        settings = Settings(_env_file=None, database_url=db_url, redis_url=redis_url)
        upgrade(settings.sqlalchemy_url)
        asyncio.run(_seed(settings))
        started = time.monotonic()
        users = asyncio.run(build_data(db_url))
        print(f"data: {USERS} users x {AVATARS_PER_USER} avatars in {time.monotonic() - started:.1f}s")
        tokens = [issue_access_token(user_id=u, token_version=v, secret=secret, ttl=3600) for u, v in users]
        script = work / "tokens.lua"
        lua_script(tokens, script)

        py_port, node_port = free_port(), free_port()
        env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "JWT_SECRET": secret,
               "APP_ENV": "development", "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING",
               "DATA_DIR": str(work / "data"), "REDIS_NAMESPACE": f"bench-{name}", "DB_POOL_SIZE": "10"}
        serve = [sys.executable, "-m", "server.cli", "serve", "--port", str(py_port)]
        if args.profile:
            serve = [str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "-r", "200",
                     "-o", args.profile, "--", *serve]
        procs.append(subprocess.Popen(serve,
                                      cwd=ROOT, env={**env, "HOST": "127.0.0.1", "PORT": str(py_port),
                                                     "PUBLIC_URL": f"http://localhost:{py_port}"},
                                      stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["node", "server.js"], cwd=PEER, stdout=subprocess.DEVNULL,
                                      env={**env, "PORT": str(node_port), "DB_POOL_SIZE": "20",
                                           "PUBLIC_URL": f"http://localhost:{node_port}"}))
        servers = {"aiohttp (this app)": f"http://127.0.0.1:{py_port}",
                   "Express 5 + pg + jsonwebtoken": f"http://127.0.0.1:{node_port}"}
        for url in servers.values():
            wait_http(url + "/api/avatars")

        ours, theirs = (fetch(url + PATH, tokens[0]) for url in servers.values())
        assert ours["total"] == theirs["total"] == AVATARS_PER_USER
        assert [a["id"] for a in ours["items"]] == [a["id"] for a in theirs["items"]]
        assert set(ours["items"][0]) == set(theirs["items"][0]), set(ours["items"][0]) ^ set(theirs["items"][0])

        for url in servers.values():  # warm caches, JITs and pools
            wrk(url + PATH, script, seconds=3, connections=args.connections)
        results: dict[str, list[dict]] = {label: [] for label in servers}
        for _ in range(args.rounds):
            for label, url in servers.items():
                results[label].append(wrk(url + PATH, script, seconds=args.duration, connections=args.connections))

        print(f"\nGET {PATH}, wrk -t2 -c{args.connections} -d{args.duration}s, best of {args.rounds}, one process each")
        best = {label: max(runs, key=lambda r: r["rps"]) for label, runs in results.items()}
        for label, r in best.items():
            runs = ", ".join(f"{x['rps']:.0f}" for x in results[label])
            print(f"  {label:32s} {r['rps']:8.0f} req/s  p50 {r['p50']:>8s}  p99 {r['p99']:>8s}  "
                  f"non-2xx {r['non_2xx']}  (runs: {runs})")
        ratio = best["aiohttp (this app)"]["rps"] / best["Express 5 + pg + jsonwebtoken"]["rps"]
        print(f"  ratio aiohttp / Express: {ratio:.2f}x (target >= 1.0x)")
        return 0 if all(r["non_2xx"] == 0 for r in best.values()) else 1
    finally:
        for proc in procs:
            proc.send_signal(2 if args.profile else 15)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
