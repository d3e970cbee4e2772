"""Real server processes (`lustify serve`) and a worker-like publisher process, for fan-out tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from server.config import Settings
from server.embedded import free_port


def settings_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    """The environment that makes a child process build the same Settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "DB_"))}
    values = {**settings.model_dump(), **overrides}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        env[name.upper()] = str(value)
    return env


class ServerProcess:
    """`python -m server.cli serve` on a free loopback port, stopped on exit."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.port = free_port()
        self.env = settings_env(settings, host="127.0.0.1", port=self.port, **overrides)
        self.proc: subprocess.Popen | None = None
        self.cwd = tempfile.mkdtemp(prefix="lustify-serve-")  # no stray .env is read

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ServerProcess:
        self.log = Path(self.cwd) / "server.log"
        with self.log.open("ab") as out:
            self.proc = await asyncio.to_thread(
                subprocess.Popen, [sys.executable, "-m", "server.cli", "serve"], env=self.env,
                cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT)
        deadline = asyncio.get_running_loop().time() + 20
        async with aiohttp.ClientSession() as http:
            while asyncio.get_running_loop().time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}")
                try:
                    async with http.get(self.url + "/health") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("server did not start")

    def errors(self) -> list[str]:
        """Log lines of unhandled errors (each a 500 a client saw), with what follows them."""
        lines = self.log.read_text(errors="replace").splitlines()
        found = []
        for i, line in enumerate(lines):
            if "unhandled error" in line:
                block = lines[i:i + 80]
                end = next((j for j, text in enumerate(block[1:], 1) if text and not text.startswith((" ", "Traceback"))
                            and not text.startswith("During") and not text.startswith("The above")), len(block))
                found.append(block[0] + " ... " + " | ".join(block[max(1, end - 1):end + 1]))
        return found

    async def __aexit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def publish_from_other_process(settings: Settings, user_id: str, count: int) -> list[int]:
    """Commit `count` credits.updated events from a separate Python process, as a worker would."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("publish_events.py")), user_id, str(count),
        env=settings_env(settings), stdout=asyncio.subprocess.PIPE, cwd=tempfile.gettempdir())
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out
    return [int(x) for x in out.decode().split()]


class WorkerProcess:
    """`python -m server.cli worker`, stopped (SIGTERM, then SIGKILL) on exit if still running."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.env = settings_env(settings, **overrides)
        self.cwd = tempfile.mkdtemp(prefix="lustify-worker-")
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.log = Path(self.cwd) / "worker.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "worker"], env=self.env,
                                         cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT)
        return self

    def log_tail(self, lines: int = 40) -> str:
        """The end of its output, for a failing test's message."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout)

    async def __aenter__(self) -> WorkerProcess:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
