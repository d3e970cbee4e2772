"""Run the project's nginx.conf (Debian's nginx) on loopback in front of local app servers."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from server.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def local_config(upstreams: list[int], listen: int, workdir: Path) -> Path:
    """nginx.conf with the upstream pointed at local ports and paths inside `workdir`."""
    text = (ROOT / "nginx.conf").read_text()
    servers = "".join(f"        server 127.0.0.1:{port};\n" for port in upstreams)
    text = re.sub(r"        server app:3001;\n", servers, text)
    text = text.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    text = text.replace("pid /tmp/nginx-lustify.pid;", f"pid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;")
    text = text.replace("http {", f"http {{\n    client_body_temp_path {workdir}/body;\n"
                        f"    proxy_temp_path {workdir}/proxy;\n", 1)
    text = text.replace("worker_processes auto;", "worker_processes 1;")
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


class Nginx:
    def __init__(self, upstreams: list[int], workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.config = local_config(upstreams, self.port, workdir)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Nginx:
        binary = nginx_binary()
        assert binary, "nginx is not installed"
        self.proc = subprocess.Popen(
            [binary, "-c", str(self.config), "-p", str(self.workdir), "-g", "daemon off;"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stdout.read().decode())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
