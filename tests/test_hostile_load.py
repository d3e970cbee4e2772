"""No request holds the event loop: /health, probed from a process of its own, stays quick
while 20 clients send maximum-size bodies, and while 20 logins hash at bcrypt cost 12.

The scenarios are bench/hostile_load.py's; docs/benchmarks.md has the figures. The bounds
here are generous (the suite shares 2 cores with other work); what they catch is a stall of
the kind the attack found: ~8 s for one 52 MB body, 0.4-0.6 s for 20 logins.
"""

from __future__ import annotations

import os

import pytest

from bench.harness import summary
from bench.hostile_load import bodies_scenario, logins_scenario, screening_scenario
from tests.support.processes import ServerProcess


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@pytest.mark.slow
async def test_health_stays_quick_while_20_clients_send_maximum_size_bodies(settings) -> None:
    async with ServerProcess(settings, rate_limit_enabled=False, log_level="WARNING") as server:
        samples, statuses = await bodies_scenario(server.url, seconds=8)
    print(f"/health under max-size bodies: {summary(samples)}; {statuses}")
    assert len(samples) > 50
    assert _p99(samples) < 400 and max(samples) < 1500, summary(samples)
    answered = {key.rsplit(" ", 1)[1] for key in statuses}
    assert answered <= {"400", "413", "closed"}, statuses  # refused, never a 500
    assert any(key.endswith(" 413") or key.endswith(" closed") for key in statuses)


@pytest.mark.slow
async def test_health_stays_quick_while_12_clients_send_the_longest_avatar_texts(settings) -> None:
    async with ServerProcess(settings, rate_limit_enabled=False, log_level="WARNING") as server:
        samples, statuses = await screening_scenario(server.url, settings.sqlalchemy_url, seconds=6)
    print(f"/health under avatar screening: {summary(samples)}; {statuses}")
    assert len(samples) > 20 and sum(statuses.values()) > 12
    assert set(statuses) <= {"200", "409"}, statuses  # screened and applied, or the avatar still busy
    # Generous (the suite shares 2 cores, some hours twice as slow: p99 419 ms seen on a
    # correct build): the stall it catches is the attack's, 1.8 s at /health.
    assert _p99(samples) < 800 and max(samples) < 1500, summary(samples)


@pytest.mark.slow
async def test_health_stays_quick_during_20_logins_at_bcrypt_cost_12(settings) -> None:
    async with ServerProcess(settings, bcrypt_rounds=12, rate_limit_enabled=False,
                             log_level="WARNING") as server:
        samples, rate = await logins_scenario(server.url, rounds=1)
    print(f"/health during 20 logins at cost 12: {summary(samples)}; {rate:.1f} logins/s")
    assert len(samples) > 20
    assert _p99(samples) < 250 and max(samples) < 1000, summary(samples)


async def test_password_hashing_never_runs_on_more_threads_than_cores_less_one() -> None:
    import asyncio
    import threading

    from server.auth import passwords

    passwords.use_threads(0)
    busy: list[int] = []

    async def watch() -> None:
        while True:
            busy.append(sum(t.name.startswith("bcrypt") for t in threading.enumerate()))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    hashes = await asyncio.gather(*(passwords.hash_password(f"pw-{i}", rounds=8) for i in range(20)))
    watcher.cancel()
    assert len(set(hashes)) == 20 and busy
    assert max(busy) <= passwords.default_threads() == max(1, len(os.sched_getaffinity(0)) - 1)
