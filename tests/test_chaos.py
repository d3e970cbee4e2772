"""The whole system under faults, bounded (about a minute): see tests/support/chaos.py."""

from __future__ import annotations

import pytest

from tests.support.chaos import run

pytestmark = pytest.mark.slow


async def test_generations_survive_redis_postgres_and_worker_faults(settings) -> None:
    report = await run(settings, generations=30, rate=5.0, users=6, settle_timeout=90)
    assert report.problems() == [], report
    assert report.accepted == report.submitted == 30
    assert report.outcomes.get("completed", 0) + report.outcomes.get("failed", 0) == 30
    assert report.settled_after_last_fault < 90
