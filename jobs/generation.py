"""The generation jobs: arq's side of server/content/runner.py (timeouts, retries, shutdowns, and
a rendering video's next poll: the same job deferred, so no slot is held while it waits)."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from arq import Retry
from arq.worker import func

from server.content.runner import GenerationRun
from server.resources import Resources


async def run_generation(ctx: dict[str, Any], content_id: str, *, kind: str, timeout: float) -> str:
    res: Resources = ctx["res"]
    run = GenerationRun(res, uuid.UUID(content_id), job_id=ctx.get("job_id") or content_id, timeout=timeout,
                        kind=kind)
    outcome = "interrupted"
    try:
        stopping = ctx.get("stopping")
        result = await run.run(stopping=lambda: stopping is not None and stopping.is_set())
        outcome = result.outcome
        if result.outcome in ("retry", "handed_back", "polling"):
            raise Retry(defer=result.retry_in)
        return outcome
    finally:
        await record_outcome(res, kind=run.attempt.row["type"] if run.attempt else "unknown",
                             outcome=outcome, seconds=time.monotonic() - run.started)


async def record_outcome(res: Resources, *, kind: str, outcome: str, seconds: float) -> None:
    """Job counters in Redis, so every worker's figures reach the app's /metrics."""
    with contextlib.suppress(Exception):
        key = res.settings.key("metrics", "generation")
        async with res.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(key, f"{kind}|{outcome}", 1)
            pipe.hincrbyfloat(key, f"{kind}|seconds", seconds)
            await pipe.execute()


def generation_jobs(settings) -> list[Any]:
    """arq functions for both kinds, each with a timeout that fits its provider times."""

    async def generate_image(ctx: dict[str, Any], content_id: str) -> str:
        return await run_generation(ctx, content_id, kind="image", timeout=settings.image_job_timeout_seconds)

    async def generate_video(ctx: dict[str, Any], content_id: str) -> str:
        return await run_generation(ctx, content_id, kind="video", timeout=settings.video_step_timeout_seconds)

    # Our own attempt count and a video's deadline decide when to give up; arq must never stop
    # first (hand-backs after shutdowns and lost databases do not count, and each poll is a try).
    tries = 10_000_000
    return [
        func(generate_image, name="generate_image", timeout=settings.image_job_timeout_seconds, max_tries=tries),
        func(generate_video, name="generate_video", timeout=settings.video_step_timeout_seconds, max_tries=tries),
    ]
