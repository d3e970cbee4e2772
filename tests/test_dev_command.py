"""`lustify dev` on a fresh data dir: embedded PostgreSQL and Redis, health 200, clean stop,
and a second start that finds the data of the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from server.embedded import free_port

pytestmark = __import__("pytest").mark.slow


def _call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _start(data_dir: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DB_HOST", "JWT_SECRET")}
    env["BCRYPT_ROUNDS"] = "4"
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _worker_pids(parent: int) -> list[int]:
    """`lustify worker` children of the dev process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"worker" in cmdline:
            found.append(int(entry.name))
    return found


def _listening_on(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port`, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def _wait_worker(url: str, timeout: float = 30) -> None:
    """Until /health sees a worker heartbeat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = _call(url + "/health")
        if body.get("checks", {}).get("worker") == "ok":
            return
        time.sleep(0.2)
    raise AssertionError("no worker heartbeat")


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode())
        try:
            status, body = _call(url + "/health")
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("lustify dev did not become healthy")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("lustify dev did not stop on SIGTERM") from None
    return output.decode()


def test_dev_starts_on_embedded_servers_and_keeps_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    email = f"dev-{uuid.uuid4().hex[:8]}@example.com"

    proc = _start(data_dir, port)
    try:
        health = _wait_healthy(proc, url)
        assert {k: health["checks"][k] for k in ("database", "redis")} == {"database": "ok", "redis": "ok"}
        assert _listening_on(port) == {"127.0.0.1"}  # not the network: local billing grants credits
        _wait_worker(url)
        [first_worker] = _worker_pids(proc.pid)
        # A worker that dies is started again, and /health sees the new one beat.
        os.kill(first_worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _worker_pids(proc.pid) in ([], [first_worker]):
            time.sleep(0.2)
        assert _worker_pids(proc.pid) and first_worker not in _worker_pids(proc.pid)
        _wait_worker(url)
        status, body = _call(url + "/api/auth/register", {
            "email": email, "password": "a long password", "date_of_birth": "1990-01-01"})
        assert status == 202, body
        deadline = time.monotonic() + 20
        while not list((data_dir / "outbox").glob("*.eml")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list((data_dir / "outbox").glob("*.eml")), "the worker did not deliver the email"
    finally:
        output = _stop(proc)
    assert proc.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output
    assert "/api/auth/verify-email/" in output  # the email is printed for curl users
    # What a developer looks for is there (requests, emails, job outcomes); nothing repeats
    # while nothing happens (the sweeps ran every 10 s, quietly), and no plugin chatter.
    assert "POST /api/auth/register 20" in output and "job send_email" in output
    assert "sweep_generations" not in output and "alembic" not in output and "arq.worker" not in output
    assert (data_dir / "postgres" / "PG_VERSION").exists()

    proc = _start(data_dir, port)
    try:
        _wait_healthy(proc, url)
        status, body = _call(url + "/api/auth/login", {"email": email, "password": "a long password"})
        assert status == 200, body
    finally:
        _stop(proc)
    assert proc.returncode == 0
