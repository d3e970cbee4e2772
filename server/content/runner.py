"""One run of a generation under a heartbeat-renewed lease: claim, enhance, generate, store,
complete; a video starts once and each later run polls (`resume`), giving the slot back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select

from db.faults import is_transient
from db.models import Avatar
from db.models import GeneratedContent as C
from server.adapters.ai.base import ProviderError
from server.adapters.storage.base import (
    content_image_key,
    content_video_key,
    content_video_thumbnail_key,
)
from server.content import lifecycle
from server.content.lifecycle import Attempt, Superseded
from server.media import thumbnail_jpeg, video_first_frame_jpeg
from server.resources import Resources

log = logging.getLogger(__name__)
AVATAR_WAIT_SECONDS = 120  # a generation queued right after its avatar waits for the profile

Outcome = Literal["completed", "discarded", "skipped", "failed", "retry", "handed_back", "timed_out", "polling"]


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    retry_in: float = 0.0  # for "retry", "handed_back" and "polling": when arq should run the job again


class LeaseLost(Exception):
    """The heartbeat could not renew the lease in time: another run may own the row now."""


class GenerationRun:
    def __init__(self, res: Resources, content_id: uuid.UUID, *, job_id: str, timeout: float,
                 kind: str | None = None) -> None:
        self.res = res
        self.kind = kind  # "image" runs never resume a poll
        self.settings = res.settings
        self.content_id = content_id
        self.job_id = job_id  # only the job the row names may run it (retries and takeovers rename it)
        self.timeout = timeout
        self.started = time.monotonic()
        self.attempt: Attempt | None = None
        self.lease_until = 0.0  # monotonic time the lease is known to hold until
        self.lost: BaseException | None = None
        self.written: list[str] = []

    # moves, each retried while the database is briefly away

    async def _move(self, work: Any) -> Any:
        return await lifecycle.persist(self.res.sessionmaker, work,
                                       patience=self.settings.generation_db_patience_seconds)

    async def claim(self) -> bool:
        s = self.settings
        self.attempt = await self._move(lambda session: lifecycle.claim(
            session, content_id=self.content_id, job_id=self.job_id, lease_seconds=s.generation_lease_seconds,
            max_attempts=s.generation_max_attempts))
        if self.attempt is None:
            return False
        self.lease_until = time.monotonic() + s.generation_lease_seconds
        return True

    async def begin(self) -> bool:
        """Go on polling a video this job started, else claim the row; False if not ours to run."""
        if self.kind != "image":
            self.attempt = await lifecycle.resume(self.res.reader, content_id=self.content_id, job_id=self.job_id)
            if self.attempt is not None:
                # Its lease holds at least until this poll's step renews it (a compare-and-set).
                self.lease_until = time.monotonic() + self.settings.generation_lease_seconds
                return True
        return await self.claim()

    async def exhausted(self) -> bool:
        return await self._move(lambda session: lifecycle.exhausted(
            session, content_id=self.content_id, job_id=self.job_id,
            max_attempts=self.settings.generation_max_attempts))

    async def step(self, stage: str, progress: int, **values: Any) -> None:
        """Persist progress (renewing the lease) and tell the user; Superseded if not ours."""
        self.check_lease()
        lease = self.settings.generation_lease_seconds
        await self._move(lambda session: lifecycle.step(
            session, attempt=self.attempt, stage=stage, progress=progress, lease_seconds=lease, **values))
        self.lease_until = time.monotonic() + lease

    def check_lease(self) -> None:
        if self.lost is not None:
            raise self.lost
        if time.monotonic() >= self.lease_until:
            raise LeaseLost()

    async def keep_lease(self, run_task: asyncio.Task) -> None:
        """Renew the lease while the run lives; stop the run when it cannot be renewed."""
        lease = self.settings.generation_lease_seconds
        while True:
            await asyncio.sleep(max(0.2, lease / 3))
            while True:
                try:
                    mine = await lifecycle.persist(
                        self.res.sessionmaker,
                        lambda session: lifecycle.renew(session, attempt=self.attempt, lease_seconds=lease),
                        patience=0)
                except Exception as exc:
                    if not is_transient(exc):
                        log.exception("lease renewal of %s failed", self.content_id)
                    if time.monotonic() < self.lease_until - 1:
                        await asyncio.sleep(0.5)
                        continue
                    self.lost = LeaseLost()
                    run_task.cancel()
                    return
                if not mine:
                    self.lost = Superseded()
                    run_task.cancel()
                    return
                self.lease_until = time.monotonic() + lease
                break

    async def complete(self, storage_key: str, thumbnail_key: str | None) -> bool:
        return await self._move(lambda session: lifecycle.complete(
            session, attempt=self.attempt, storage_key=storage_key, thumbnail_key=thumbnail_key,
            storage=self.res.storage))

    async def fail(self, error: str, *, code: str = "generation_failed") -> None:
        await fail_generation(self.res, content_id=self.content_id, error=error, code=code,
                              attempt=self.attempt.number if self.attempt else None, job_id=self.job_id)

    async def hand_back(self, stage: str, *, counts: bool) -> bool:
        if not counts and not self.attempt.claimed:
            # A video's poll holds nothing to give back: the row stays processing under its
            # lease, and arq runs the job again (at once, on any worker) to poll on.
            return True
        return await self._move(lambda session: lifecycle.hand_back(
            session, attempt=self.attempt, stage=stage, counts=counts))

    # the work

    async def _avatar(self) -> tuple[int, dict[str, Any] | None]:
        """The avatar's seed and profile; waits while the avatar itself is still being created."""
        row = self.attempt.row
        seed = int.from_bytes(self.content_id.bytes[:6], "big")
        if row["avatar_id"] is None:
            return seed, None
        waited = 0.0
        while True:
            async with self.res.sessionmaker() as session:
                avatar = (await session.execute(
                    select(Avatar.seed, Avatar.profile, Avatar.status).where(Avatar.id == row["avatar_id"])
                )).one_or_none()
            if avatar is None:  # deleted meanwhile: the generation goes on without it
                return seed, None
            if avatar.status != "creating" or waited >= AVATAR_WAIT_SECONDS:
                return avatar.seed, avatar.profile
            await self.step("waiting_for_avatar", 5)
            await asyncio.sleep(0.5)
            waited += 0.5

    async def produce(self) -> tuple[str, str] | None:
        """The stored file and thumbnail keys; None while a video renders (poll it again later)."""
        ai, row = self.res.ai, self.attempt.row
        if row["type"] == "video" and row["provider_request_id"] is not None:
            # A re-run polls the request it has instead of paying for a second video.
            return await self._video_files(await self._poll(row["provider_request_id"]))
        seed, profile = await self._avatar()
        prompt, enhanced = row["enhanced_prompt"], {}
        if prompt is None:
            prompt = await ai.enhance_prompt(prompt=row["prompt"], kind=row["type"], profile=profile)
            await self.res.moderator.screen_enhanced_prompt(prompt, user_id=row["user_id"])
            enhanced = {"enhanced_prompt": prompt}  # kept with the next step: a re-run reuses it
        params = row["params"]
        if row["type"] == "image":
            await self.step("generating", 30, **enhanced)
            image = await ai.generate_image(prompt=prompt, seed=seed, quality=row["quality"],
                                            aspect_ratio=params.get("aspect_ratio", "1:1"))
            await self.step("storing", 85)
            key = content_image_key(row["user_id"], self.content_id, int(time.time() * 1000))
            thumb_key = key.replace(".jpg", "_thumb.jpg")
            await self._store(key, image.data, image.content_type)
            await self._store(thumb_key, await asyncio.to_thread(thumbnail_jpeg, image.data), "image/jpeg")
            return key, thumb_key
        request_id = await self._start_video(prompt, seed, params, enhanced)
        return await self._video_files(await self._poll(request_id))  # a quick provider is done at once

    async def _start_video(self, prompt: str, seed: int, params: dict[str, Any], enhanced: dict[str, str]) -> str:
        await self.step("generating", 30, **enhanced)
        image_url = image_data = None
        if params.get("source_content_id"):
            image_url, image_data = await self._source_image(uuid.UUID(params["source_content_id"]))
        self.check_lease()
        request_id = await self.res.ai.start_video(
            prompt=prompt, seed=seed, duration_seconds=int(params.get("duration_seconds", 6)),
            aspect_ratio=params.get("aspect_ratio", "16:9"), image_url=image_url,
            image_data=image_data, quality=self.attempt.row["quality"],
        )
        await self.step("rendering", 35, provider_request_id=request_id)
        return request_id

    async def _poll(self, request_id: str) -> bytes | None:
        """Ask the provider once: the MP4 when done, None while it renders (progress persisted)."""
        status = await self.res.ai.poll_video(request_id)
        if status.state == "done" and status.data:
            return status.data
        if status.state in ("failed", "expired"):
            error = status.error or f"video generation {status.state}"
            raise ProviderError(error, transient=False, code=status.code or "provider_error", user_message=error)
        started = self.attempt.row["started_at"]
        limit = timedelta(seconds=self.settings.video_job_timeout_seconds)
        if started is not None and datetime.now(UTC) - started > limit:
            raise ProviderError(f"video not ready {limit} after its start", transient=False,
                                code="timed_out", user_message="The generation timed out")
        await self.step("rendering", min(35 + int(0.5 * (status.progress or 0)), 85))
        return None

    async def _video_files(self, video: bytes | None) -> tuple[str, str] | None:
        if video is None:
            return None
        await self.step("storing", 90)
        user_id, stamp = self.attempt.row["user_id"], int(time.time() * 1000)
        key = content_video_key(user_id, self.content_id, stamp)
        thumb_key = content_video_thumbnail_key(user_id, self.content_id, stamp)
        await self._store(key, video, "video/mp4")
        await self._store(thumb_key, await asyncio.to_thread(video_first_frame_jpeg, video), "image/jpeg")
        return key, thumb_key

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

    def backoff(self) -> float:
        number = self.attempt.number if self.attempt else 1
        return self.settings.generation_retry_backoff_seconds * 2 ** (number - 1)

    async def run(self, *, stopping: Any = lambda: False) -> Result:
        """The whole run; `stopping()` tells a worker shutdown from a job timeout."""
        heartbeat: asyncio.Task | None = None
        try:
            if not await self.begin():
                if await self.exhausted():
                    await self.fail("The generation did not finish after several attempts")
                    return Result("failed")
                return Result("skipped")
            heartbeat = asyncio.create_task(self.keep_lease(asyncio.current_task()))
            files = await self.produce()
            if files is None:
                return Result("polling", self.settings.video_poll_interval_seconds)
            key, thumb = files
            self.check_lease()
            if await self.complete(key, thumb):
                self.written.clear()
                return Result("completed")
            await self.discard_files()
            return Result("discarded")
        except (Superseded, LeaseLost):
            await self.discard_files()
            return Result("discarded")
        except ProviderError as exc:
            await self.discard_files()
            log.warning("generation %s: provider %s (%s)", self.content_id, exc.code, exc.message)
            if exc.transient and self.attempt.number < self.settings.generation_max_attempts:
                await self.hand_back("retrying", counts=True)
                return Result("retry", self.backoff())
            await self.fail(exc.user_message, code=exc.code)  # users see only what may be shown
            return Result("failed")
        except asyncio.CancelledError:
            await self.discard_files()
            if self.lost is not None:  # our heartbeat stopped us: the row is not ours to touch
                return Result("discarded")
            if self.attempt is None:
                raise
            if not stopping() and time.monotonic() - self.started >= self.timeout - 1:
                await asyncio.shield(self.fail("The generation timed out", code="timed_out"))
                raise
            # A worker shutdown: hand the row back, uncounted, for another worker at once
            # (if the database is away too, the lease runs out and the sweep takes over);
            # a video's poll leaves it processing for the job's next run.
            try:
                await asyncio.shield(self.hand_back("handed_back", counts=False))
            except Exception as exc:
                log.warning("could not hand %s back: %r", self.content_id, exc)
            raise
        except Exception as exc:
            await self.discard_files()
            if is_transient(exc):  # the database or Redis went away for longer than we waited
                log.warning("generation %s interrupted: %r", self.content_id, exc)
                if self.attempt is not None:
                    with contextlib.suppress(Exception):
                        await self.hand_back("retrying", counts=False)
                return Result("handed_back", 1.0)
            log.exception("generation %s failed unexpectedly", self.content_id)
            if self.attempt and self.attempt.number < self.settings.generation_max_attempts:
                await self.hand_back("retrying", counts=True)
                return Result("retry", self.backoff())
            await self.fail("The generation failed because of an internal error")
            return Result("failed")
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)


async def fail_generation(res: Resources, *, content_id: uuid.UUID, error: str, code: str = "generation_failed",
                          attempt: int | None = None, job_id: str | None = None) -> bool:
    """processing/queued -> failed, the charge refunded once, the user told."""
    return await lifecycle.persist(res.sessionmaker, lambda session: lifecycle.fail(
        session, content_id=content_id, error=error, code=code, attempt=attempt, job_id=job_id),
        patience=res.settings.generation_db_patience_seconds)
