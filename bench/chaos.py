"""Faults under load: generations while Redis is killed, PostgreSQL restarted, workers killed.

Prints what tests/support/chaos.py measured: outcomes, recovery time per fault, time to
settle after the last fault, and anything the product promises that did not hold.
Run: .venv/bin/python -m bench.chaos [generations] [rate per second]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from bench.harness import REDIS_URL
from server.config import Settings
from tests.support.chaos import run


async def main(generations: int, rate: float) -> int:
    settings = Settings(_env_file=None, app_env="test", database_url="postgresql://unused/unused",
                        redis_url=REDIS_URL, jwt_secret=f"chaos-{uuid.uuid4().hex}-0123456789abcdef",
                        bcrypt_rounds=4, log_json=False, data_dir=Path(tempfile.mkdtemp(prefix="chaos-")))
    report = await run(settings, generations=generations, rate=rate, users=10, settle_timeout=180,
                       log=lambda line: print(f"  {line}", flush=True))
    print(f"generations: {report.submitted} submitted, {report.accepted} accepted, outcomes {report.outcomes}")
    print(f"HTTP statuses seen by clients: {dict(sorted(report.statuses.items()))}")
    for fault, seconds in report.recovery.items():
        print(f"recovery  {fault:<40} {seconds:6.2f} s")
    print(f"all generations ended {report.settled_after_last_fault:.1f} s after the last fault")
    problems = report.problems()
    print("problems: none" if not problems else "problems:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(asyncio.run(main(int(args[0]) if args else 80, float(args[1]) if len(args) > 1 else 5.0)))
