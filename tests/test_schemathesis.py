"""Schemathesis against the running app: every operation, signed in and not, all its phases.

The schema is the server's own /openapi.json; a failure is a 500, an undocumented status, a
response off its schema or content type, or an auth hole. Bounded by --max-time per run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.support.api import Api, verified_user

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
ROOT = Path(__file__).resolve().parents[1]
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "ignored_auth", "use_after_free", "ensure_resource_availability",
])
SECONDS = int(os.environ.get("SCHEMATHESIS_SECONDS", "60"))  # per run; two runs


async def _run(base_url: str, report: Path, *options: str) -> tuple[int, str]:
    config = report.with_name("schemathesis.toml")
    # Its own sign-up would make an unverified user; runs are either anonymous or ours.
    config.write_text("[auth]\nauto-signup = false\n")
    args = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{base_url}/openapi.json",
            "--phases", "examples,coverage,fuzzing,stateful", "--checks", CHECKS,
            "--max-time", str(SECONDS), "--max-examples", "40", "--workers", "2",
            "--request-timeout", "30", "--seed", "12", "--no-color",
            "--exclude-path-regex", "^/files/",  # signed file URLs: not JSON, not guessable
            "--report", "ndjson", "--report-ndjson-path", str(report)]
    args += options
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
           "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT,
                                                cwd=report.parent)  # its cache stays out of the repo
    out, _ = await asyncio.wait_for(proc.communicate(), SECONDS * 3 + 120)
    return proc.returncode, out.decode(errors="replace")


def _operations_tested(report: Path) -> tuple[set[str], int]:
    """The operations that got requests, and how many requests there were."""
    tested, requests = set(), 0
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if finished:
            recorder = finished["recorder"]
            requests += len(recorder.get("interactions", {}))
            for case in recorder.get("cases", {}).values():
                tested.add(f"{case['value']['method'].upper()} {case['value']['path']}")
    return tested, requests


@pytest.mark.slow
@pytest.mark.parametrize("signed_in", [False, True], ids=["anonymous", "signed-in"])
async def test_schemathesis_finds_no_failures(api: Api, app_server, worker, settings, tmp_path,
                                              signed_in: bool) -> None:
    options = []
    if signed_in:
        user = await verified_user(api, settings.data_dir / "outbox")
        # Logout ends the session of the token it is called with, this run's only token; the
        # anonymous run covers it.
        options += ["-H", f"Authorization: Bearer {user.access_token}",
                    "--exclude-path", "/api/auth/logout"]
    report = tmp_path / "events.ndjson"
    code, output = await _run(api.base_url, report, *options)
    # Failures and errors come before the warnings, the summary after them: show both.
    found, _, rest = output.partition("= WARNINGS =")
    assert code == 0, found[-8000:] + "\n...\n" + rest[rest.find("= SUMMARY ="):]
    doc = (await api.get("/openapi.json")).body
    operations = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops
                  if not p.startswith("/files/") and p != "/openapi.json"}  # the schema itself
    if signed_in:
        operations.discard("POST /api/auth/logout")
    tested, requests = _operations_tested(report)
    print(f"schemathesis ({'signed in' if signed_in else 'anonymous'}): {requests} requests, "
          f"{len(operations & tested)}/{len(operations)} operations")
    assert operations <= tested, sorted(operations - tested)
