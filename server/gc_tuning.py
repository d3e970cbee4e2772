"""Keep full garbage-collection passes out of the event-delivery path, and measure them.

A full pass walks every tracked object; right after startup most of them are modules,
ORM mappers and schemas that live as long as the process. Freezing them moves them out
of the collector's sight, so later passes only walk what the process made since
(connections, requests), and a larger first-generation threshold makes passes rarer:
per-event garbage is freed by reference counting and barely moves the counter.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import Histogram

from server import keys

GEN0_THRESHOLD = 50_000


async def settle_startup_heap(app: web.Application) -> None:
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)


async def observe_gc_pauses(app: web.Application) -> AsyncIterator[None]:
    """Export every collector pause as `python_gc_pause_seconds{generation}`."""
    pauses = Histogram(
        "python_gc_pause_seconds", "Garbage-collector pauses", ["generation"],
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        registry=app[keys.metrics].registry,
    )
    by_generation = [pauses.labels(str(generation)) for generation in range(3)]
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            by_generation[info["generation"]].observe(time.perf_counter() - started[0])

    gc.callbacks.append(on_gc)
    yield
    gc.callbacks.remove(on_gc)
