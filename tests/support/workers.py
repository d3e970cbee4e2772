"""A real arq worker running inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from arq.worker import Worker

from jobs.worker import make_worker
from server.config import Settings


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **overrides: Any) -> AsyncIterator[Worker]:
    # Cron sweeps fire on wall-clock minutes and would land in random tests; tests call them directly.
    overrides.setdefault("cron_jobs", [])
    worker = make_worker(settings, handle_signals=False, **overrides)
    task = asyncio.create_task(worker.main())
    try:
        yield worker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # close() cancels jobs still running and gathers them: their CancelledError ends here.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await worker.close()
