"""The generation job: a state machine that is safe to run more than once.

claim (queued -> processing under a lease) -> enhance prompt -> generate (video: start,
then poll) -> copy to storage -> completed; or failed + refund once. The lease is renewed
while the job works; a job whose lease expired (its worker died) is taken over by the
sweep. Only the holder of the current attempt may finish the row, so a late or duplicate
run discards what it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from arq import Retry
from arq.worker import func
from sqlalchemy import func as sql
from sqlalchemy import or_, select, update

from db.models import Avatar
from db.models import GeneratedContent as C
from db.session import transaction
from server import activity
from server.adapters.ai.base import ProviderError
from server.adapters.storage.base import (
    content_image_key,
    content_video_key,
    content_video_thumbnail_key,
)
from server.content.queries import COLUMNS, render
from server.content.service import refund_generation
from server.media import thumbnail_jpeg, video_first_frame_jpeg
from server.realtime.events import GenerationCompleted, GenerationFailed, GenerationProgress
from server.realtime.publisher import notify
from server.resources import Resources

log = logging.getLogger(__name__)
AVATAR_WAIT_SECONDS = 120  # a generation queued right after its avatar waits for the profile


class Superseded(Exception):
    """The row is no longer ours (canceled, or another run took it over)."""


@dataclass(frozen=True)
class Produced:
    storage_key: str
    thumbnail_key: str | None


class GenerationRun:
    def __init__(self, res: Resources, content_id: uuid.UUID, *, job_id: str, timeout: float) -> None:
        self.res = res
        self.settings = res.settings
        self.content_id = content_id
        self.job_id = job_id  # only the job the row names may run it (retries and takeovers rename it)
        self.timeout = timeout
        self.started = time.monotonic()
        self.attempt = 0
        self.row: dict[str, Any] = {}
        self.written: list[str] = []

    def _mine(self):
        return (C.id == self.content_id, C.status == "processing", C.attempts == self.attempt,
                C.job_id == self.job_id)

    async def claim(self) -> bool:
        """Take the row: queued, or processing with an expired lease (a dead run's)."""
        lease = timedelta(seconds=self.settings.generation_lease_seconds)
        async with transaction(self.res.sessionmaker) as session:
            row = (
                await session.execute(
                    update(C)
                    .where(C.id == self.content_id, C.job_id == self.job_id,
                           C.attempts < self.settings.generation_max_attempts,  # then the sweep fails it
                           or_(C.status == "queued",
                               (C.status == "processing") & (C.deadline_at < sql.now())))
                    .values(status="processing", attempts=C.attempts + 1, stage="starting",
                            progress=sql.greatest(C.progress, 5), deadline_at=sql.now() + lease,
                            started_at=sql.coalesce(C.started_at, sql.now()))
                    .returning(*COLUMNS, C.charge_key, C.provider_request_id)
                )
            ).mappings().one_or_none()
            if row is None:
                return False
            self.row = dict(row)
            self.attempt = row["attempts"]
            notify(session, row["user_id"], GenerationProgress(
                content_id=self.content_id, status="processing", progress=row["progress"], stage="starting"))
        return True

    async def keep_lease(self) -> None:
        """Renew the lease while the run lives, also during long provider calls."""
        lease = self.settings.generation_lease_seconds
        while True:
            await asyncio.sleep(max(0.5, lease / 3))
            async with transaction(self.res.sessionmaker) as session:
                renewed = (await session.execute(
                    update(C).where(*self._mine())
                    .values(deadline_at=sql.now() + timedelta(seconds=lease)).returning(C.id)
                )).scalar_one_or_none()
            if renewed is None:
                return  # canceled or taken over: the next step() notices

    async def step(self, stage: str, progress: int, **values: Any) -> None:
        """Persist progress (renewing the lease) and tell the user; Superseded if not ours."""
        lease = timedelta(seconds=self.settings.generation_lease_seconds)
        async with transaction(self.res.sessionmaker) as session:
            done = (
                await session.execute(
                    update(C).where(*self._mine())
                    .values(stage=stage, progress=progress, deadline_at=sql.now() + lease, **values)
                    .returning(C.id)
                )
            ).scalar_one_or_none()
            if done is None:
                raise Superseded()
            notify(session, self.row["user_id"], GenerationProgress(
                content_id=self.content_id, status="processing", progress=progress, stage=stage))

    async def _avatar(self) -> tuple[int, dict[str, Any] | None]:
        """The avatar's seed and profile; waits while the avatar itself is still being created."""
        seed = int.from_bytes(self.content_id.bytes[:6], "big")
        if self.row["avatar_id"] is None:
            return seed, None
        waited = 0.0
        while True:
            async with self.res.sessionmaker() as session:
                avatar = (await session.execute(
                    select(Avatar.seed, Avatar.profile, Avatar.status).where(Avatar.id == self.row["avatar_id"])
                )).one_or_none()
            if avatar is None:  # deleted meanwhile: the generation goes on without it
                return seed, None
            if avatar.status != "creating" or waited >= AVATAR_WAIT_SECONDS:
                return avatar.seed, avatar.profile
            await self.step("waiting_for_avatar", 5)
            await asyncio.sleep(0.5)
            waited += 0.5

    async def produce(self) -> Produced:
        ai, row = self.res.ai, self.row
        seed, profile = await self._avatar()
        prompt = row["enhanced_prompt"]
        if prompt is None:
            await self.step("enhancing_prompt", 10)
            prompt = await ai.enhance_prompt(prompt=row["prompt"], kind=row["type"], profile=profile)
            await self.res.moderator.screen_enhanced_prompt(prompt, user_id=row["user_id"])
            await self.step("enhancing_prompt", 20, enhanced_prompt=prompt)
        params = row["params"]
        stamp = int(time.time() * 1000)
        user_id = row["user_id"]
        if row["type"] == "image":
            await self.step("generating", 30)
            image = await ai.generate_image(prompt=prompt, seed=seed, quality=row["quality"],
                                            aspect_ratio=params.get("aspect_ratio", "1:1"))
            await self.step("storing", 85)
            key = content_image_key(user_id, self.content_id, stamp)
            thumb_key = key.replace(".jpg", "_thumb.jpg")
            await self._store(key, image.data, image.content_type)
            await self._store(thumb_key, await asyncio.to_thread(thumbnail_jpeg, image.data), "image/jpeg")
            return Produced(key, thumb_key)
        video = await self._video(prompt, seed, params)
        await self.step("storing", 90)
        key = content_video_key(user_id, self.content_id, stamp)
        thumb_key = content_video_thumbnail_key(user_id, self.content_id, stamp)
        await self._store(key, video, "video/mp4")
        await self._store(thumb_key, await asyncio.to_thread(video_first_frame_jpeg, video), "image/jpeg")
        return Produced(key, thumb_key)

    async def _video(self, prompt: str, seed: int, params: dict[str, Any]) -> bytes:
        ai = self.res.ai
        request_id = self.row["provider_request_id"]
        if request_id is None:  # a re-run resumes polling instead of paying for a second video
            await self.step("generating", 30)
            image_url = image_data = None
            if params.get("source_content_id"):
                image_url, image_data = await self._source_image(uuid.UUID(params["source_content_id"]))
            request_id = await ai.start_video(
                prompt=prompt, seed=seed, duration_seconds=int(params.get("duration_seconds", 6)),
                aspect_ratio=params.get("aspect_ratio", "16:9"), image_url=image_url,
                image_data=image_data, quality=self.row["quality"],
            )
            await self.step("rendering", 35, provider_request_id=request_id)
        while True:
            status = await ai.poll_video(request_id)
            if status.state == "done" and status.data:
                return status.data
            if status.state in ("failed", "expired"):
                raise ProviderError(status.error or f"video generation {status.state}", transient=False)
            progress = 35 + int(0.5 * (status.progress or 0))
            await self.step("rendering", min(progress, 85))
            await asyncio.sleep(self.settings.video_poll_interval_seconds)

    async def _source_image(self, source_id: uuid.UUID) -> tuple[str | None, bytes | None]:
        async with self.res.sessionmaker() as session:
            key = (await session.execute(select(C.storage_key).where(C.id == source_id))).scalar_one_or_none()
        if key is None:
            return None, None
        return await self.res.storage.signed_url(key), await self.res.storage.get(key)

    async def _store(self, key: str, data: bytes, content_type: str) -> None:
        await self.res.storage.put(key, data, content_type=content_type)
        self.written.append(key)

    async def discard_files(self) -> None:
        for key in self.written:
            with contextlib.suppress(Exception):
                await self.res.storage.delete(key)
        self.written.clear()

    async def complete(self, produced: Produced) -> bool:
        async with transaction(self.res.sessionmaker) as session:
            row = (
                await session.execute(
                    update(C).where(*self._mine())
                    .values(status="completed", stage="completed", progress=100, error=None,
                            storage_key=produced.storage_key, thumbnail_key=produced.thumbnail_key,
                            completed_at=sql.now(), deadline_at=None)
                    .returning(*COLUMNS)
                )
            ).mappings().one_or_none()
            if row is None:
                return False
            content = await render(row, self.res.storage)
            kind = row["type"].capitalize()
            await activity.record(session, user_id=row["user_id"], type="content.completed",
                                  message=f"{kind} ready", data={"content_id": str(self.content_id),
                                                                 "type": row["type"]})
            notify(session, row["user_id"], GenerationCompleted(content=content))
        return True

    async def release(self, error: str) -> None:
        """Give the lease back at once so a retry (or the sweep) can take the row."""
        async with transaction(self.res.sessionmaker) as session:
            await session.execute(update(C).where(*self._mine())
                                  .values(stage="retrying", error=error, deadline_at=sql.now()))

    async def fail(self, error: str) -> None:
        await fail_generation(self.res, content_id=self.content_id, error=error, attempt=self.attempt,
                              job_id=self.job_id)


async def fail_generation(res: Resources, *, content_id: uuid.UUID, error: str,
                          attempt: int | None = None, job_id: str | None = None) -> bool:
    """processing/queued -> failed, the charge refunded once, the user told."""
    async with transaction(res.sessionmaker) as session:
        where = [C.id == content_id, C.status.in_(("queued", "processing"))]
        if attempt is not None:
            where.append(C.attempts == attempt)
        if job_id is not None:
            where.append(C.job_id == job_id)
        row = (
            await session.execute(
                update(C).where(*where)
                .values(status="failed", stage="failed", error=error[:1000], completed_at=sql.now(),
                        deadline_at=None)
                .returning(C.user_id, C.type, C.charge_key)
            )
        ).one_or_none()
        if row is None:
            return False
        refunded = await refund_generation(session, user_id=row.user_id, charge=row.charge_key,
                                           reason=f"{row.type.capitalize()} generation failed")
        await activity.record(session, user_id=row.user_id, type="content.failed",
                              message=f"{row.type.capitalize()} generation failed: {error[:200]}",
                              data={"content_id": str(content_id), "refunded": refunded})
        notify(session, row.user_id, GenerationFailed(content_id=content_id, error=error[:1000],
                                                      refunded=refunded))
    return True


async def run_generation(ctx: dict[str, Any], content_id: str, *, timeout: float) -> str:
    res: Resources = ctx["res"]
    run = GenerationRun(res, uuid.UUID(content_id), job_id=ctx.get("job_id") or content_id, timeout=timeout)
    outcome = "skipped"
    heartbeat: asyncio.Task | None = None
    try:
        if not await run.claim():
            return outcome
        heartbeat = asyncio.create_task(run.keep_lease())
        produced = await run.produce()
        outcome = "completed" if await run.complete(produced) else "discarded"
        if outcome == "discarded":
            await run.discard_files()
        return outcome
    except Superseded:
        await run.discard_files()
        outcome = "discarded"
        return outcome
    except ProviderError as exc:
        await run.discard_files()
        if exc.transient and run.attempt < res.settings.generation_max_attempts:
            outcome = "retried"
            await run.release(exc.message)
            raise Retry(defer=res.settings.generation_retry_backoff_seconds * 2 ** (run.attempt - 1)) from exc
        outcome = "failed"
        await run.fail(exc.message)
        return outcome
    except asyncio.CancelledError:
        await run.discard_files()
        if time.monotonic() - run.started >= timeout - 1:
            outcome = "timed_out"
            await asyncio.shield(run.fail("The generation timed out"))
        else:  # worker shutting down: hand the row back for another worker
            outcome = "interrupted"
            await asyncio.shield(run.release("interrupted by a worker shutdown"))
        raise
    except Exception as exc:
        await run.discard_files()
        log.exception("generation %s failed unexpectedly", content_id)
        if run.attempt and run.attempt < res.settings.generation_max_attempts:
            outcome = "retried"
            await run.release(f"internal error: {type(exc).__name__}")
            raise Retry(defer=res.settings.generation_retry_backoff_seconds * 2 ** (run.attempt - 1)) from exc
        outcome = "failed"
        await run.fail("The generation failed because of an internal error")
        return outcome
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        await record_outcome(res, kind=run.row.get("type", "unknown"), outcome=outcome,
                             seconds=time.monotonic() - run.started)


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
        return await run_generation(ctx, content_id, timeout=settings.image_job_timeout_seconds)

    async def generate_video(ctx: dict[str, Any], content_id: str) -> str:
        return await run_generation(ctx, content_id, timeout=settings.video_job_timeout_seconds)

    tries = settings.generation_max_attempts + 2  # our own attempt count decides; arq must not stop first
    return [
        func(generate_image, name="generate_image", timeout=settings.image_job_timeout_seconds, max_tries=tries),
        func(generate_video, name="generate_video", timeout=settings.video_job_timeout_seconds, max_tries=tries),
    ]
