"""docker-compose.yml and nginx.conf, checked without a Docker engine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import start_app
from tests.support.api import Api
from tests.support.nginx import ROOT, Nginx, nginx_binary


def test_compose_services_profiles_and_healthchecks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "app", "worker", "nginx", "db-backup", "migrate"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["nginx"]["profiles"] == ["production"]
    assert services["db-backup"]["profiles"] == ["backup"]
    assert "pg_dump" in " ".join(services["db-backup"]["entrypoint"])
    for name in ("postgres", "redis", "app", "worker", "nginx"):
        assert "healthcheck" in services[name], name
    # Scaling the app needs no fixed host port on it and a shared Redis.
    assert "ports" not in services["app"] and "container_name" not in services["app"]
    assert services["app"]["environment"]["REDIS_URL"].startswith("redis://redis")
    assert services["app"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["app"]["command"] == ["lustify", "serve"]
    assert services["worker"]["command"] == ["lustify", "worker"]
    # The worker's healthcheck reads its heartbeat; deploys leave time for a drain.
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "lustify", "health", "worker"]
    assert services["worker"]["stop_grace_period"] == "30s" and services["app"]["stop_grace_period"] == "20s"
    # Local storage (no S3): the worker writes files the app serves, so they share a volume.
    assert "app_data:/data" in services["app"]["volumes"] and "app_data:/data" in services["worker"]["volumes"]
    assert "app_data" in compose["volumes"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments and continuations handled as Docker does."""
    logical, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def test_dockerfile_is_slim_and_non_root() -> None:
    steps = _dockerfile_instructions()
    stages = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    final = steps[stages[-1]:]
    assert final[0][1].split()[0] == "python:3.11-slim"  # the image that ships
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] not in ("root", "0")  # runs as the user it creates
    assert any(op == "RUN" and "useradd" in args and users[-1] in args for op, args in final)
    healthcheck = [args for op, args in final if op == "HEALTHCHECK"]
    assert healthcheck and " CMD " in f" {healthcheck[0]} " and "/health" in healthcheck[0]
    assert [args for op, args in final if op == "CMD"][-1] == '["lustify", "serve"]'


def test_env_example_lists_every_setting() -> None:
    from server.config import Settings

    listed = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
              if line and not line.startswith("#")}
    expected = {name.upper() for name in Settings.model_fields if name not in ("app_env", "host")}
    assert not expected - listed, f"missing from .env.example: {sorted(expected - listed)}"


@pytest.mark.skipif(nginx_binary() is None, reason="nginx (Debian package) is not installed")
def test_nginx_config_is_valid(tmp_path: Path) -> None:
    with Nginx([3001, 3002], tmp_path) as _:
        pass
    check = subprocess.run([nginx_binary(), "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    original = (ROOT / "nginx.conf").read_text()
    assert "client_max_body_size 1m" in original and "ip_hash" in original
    assert "proxy_set_header Upgrade $http_upgrade" in original


@pytest.mark.skipif(nginx_binary() is None, reason="nginx (Debian package) is not installed")
async def test_nginx_proxies_to_two_app_servers(settings, tmp_path: Path) -> None:
    first, second = await start_app(settings), await start_app(settings)
    try:
        with Nginx([first.port, second.port], tmp_path) as nginx:
            api = Api(nginx.url)
            try:
                health = await api.get("/health")
                assert health.status == 200 and health.body["checks"]["redis"] == "ok"
                user = await api.register()
                profile = await api.get("/api/auth/profile", token=user.access_token)
                assert profile.status == 200
            finally:
                await api.close()
    finally:
        await first.close()
        await second.close()
