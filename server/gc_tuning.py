"""The collector's settings while the app runs (put back when it stops), and its pauses as metrics;
the settings are chosen by `bench/realtime_churn.py` (docs/benchmarks.md, "Realtime churn, memory and GC")."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import Gauge, Histogram

from server import keys

# Process-wide, shared by every app of the process (tests run several): the first app to start
# saves the collector's settings, the last one to stop puts them back.
_apps_tuning = 0
_saved_thresholds: tuple[int, int, int] = gc.get_threshold()
_unfreeze_after = False


async def tune_collector(app: web.Application) -> AsyncIterator[None]:
    """Freeze the startup heap (modules, mappers, schemas: they live as long as the process),
    so a full pass walks only what was made since, and set the first-generation threshold."""
    global _apps_tuning, _saved_thresholds, _unfreeze_after
    if _apps_tuning == 0:
        _saved_thresholds = gc.get_threshold()
        _unfreeze_after = gc.get_freeze_count() == 0  # else someone else froze: theirs to undo
    _apps_tuning += 1
    try:
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = _saved_thresholds
        gc.set_threshold(app[keys.settings].gc_gen0_threshold, gen1, gen2)
        yield
    finally:
        _apps_tuning -= 1
        if _apps_tuning == 0:
            gc.set_threshold(*_saved_thresholds)
            if _unfreeze_after:
                gc.unfreeze()


async def observe_gc_pauses(app: web.Application) -> AsyncIterator[None]:
    """Export every collector pause as `python_gc_pause_seconds{generation}`."""
    pauses = Histogram(
        "python_gc_pause_seconds", "Garbage-collector pauses", ["generation"],
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        registry=app[keys.metrics].registry,
    )
    longest = Gauge("python_gc_longest_pause_seconds", "Longest garbage-collector pause so far",
                    ["generation"], registry=app[keys.metrics].registry)
    by_generation = [pauses.labels(str(generation)) for generation in range(3)]
    longest_by_generation = [longest.labels(str(generation)) for generation in range(3)]
    started = [0.0]
    worst = [0.0, 0.0, 0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        generation, took = info["generation"], time.perf_counter() - started[0]
        by_generation[generation].observe(took)
        if took > worst[generation]:
            worst[generation] = took
            longest_by_generation[generation].set(took)

    gc.callbacks.append(on_gc)
    try:
        yield
    finally:
        gc.callbacks.remove(on_gc)
