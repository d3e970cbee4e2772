"""The avatar job: character profile, then thumbnail, then ready (or failed + refund).
Every step is safe to run again: arq runs a job at least once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from arq import Retry
from arq.worker import func

from db.faults import is_transient
from db.session import transaction
from server.adapters.ai.base import AvatarSpec, ProviderError
from server.adapters.storage.base import avatar_thumbnail_key
from server.avatars import queries, service
from server.media import thumbnail_jpeg

log = logging.getLogger(__name__)
MAX_TRIES = 4
THUMBNAIL_SIZE = 512
POSES = ["head and shoulders portrait, looking at the camera, soft studio light",
         "three-quarter portrait, gentle smile, window light", "portrait outdoors, golden hour",
         "close-up portrait, neutral background, cinematic light", "portrait in a cafe, warm tones"]
STUCK_AFTER_SECONDS = 600
FAIL_AFTER_SECONDS = 3600


def thumbnail_prompt(profile: dict[str, Any], regeneration_id: uuid.UUID | None) -> str:
    pose = POSES[0] if regeneration_id is None else POSES[1 + regeneration_id.int % (len(POSES) - 1)]
    identity = profile.get("identity") or ""
    style = profile.get("style") or ""
    return f"{identity}. {pose}. Wearing {style}." if style else f"{identity}. {pose}."


async def _make(res: Any, avatar_id: uuid.UUID, regeneration_id: uuid.UUID | None) -> None:
    async with transaction(res.sessionmaker) as session:
        row = await queries.avatar_row_by_id(session, avatar_id)
        if row is not None and regeneration_id is not None and await service.regeneration_refunded(
                session, avatar_id=avatar_id, regeneration_id=regeneration_id):
            return
    if row is None and regeneration_id is not None:
        # Deleted before its new thumbnail was made: that thumbnail's charge goes back.
        await _give_up(res, avatar_id, regeneration_id, "The avatar was deleted")
        return
    if row is None or (regeneration_id is None and row["status"] != "creating"):
        return  # deleted (deletion refunds a creation itself), or a rerun of a finished job
    profile = row["profile"]
    if profile is None:
        profile = await res.ai.character_profile(AvatarSpec(
            name=row["name"], age=row["age"], seed=row["seed"], description=row["description"],
            appearance=row["appearance"] or {}, personality=row["personality"], style=row["style"]))
        await res.moderator.screen_profile(profile, user_id=row["user_id"])
        async with transaction(res.sessionmaker) as session:
            profile = await service.save_profile(session, avatar_id=avatar_id, profile=profile)
        if profile is None:
            return
    image = await res.ai.generate_image(prompt=thumbnail_prompt(profile, regeneration_id), seed=row["seed"],
                                        aspect_ratio="1:1")
    jpeg = await asyncio.to_thread(thumbnail_jpeg, image.data, size=THUMBNAIL_SIZE)
    key = avatar_thumbnail_key(row["user_id"], avatar_id)
    await res.storage.put(key, jpeg, content_type="image/jpeg")
    async with transaction(res.sessionmaker) as session:
        outcome = await service.mark_ready(session, avatar_id=avatar_id, thumbnail_key=key,
                                           regeneration_id=regeneration_id, storage=res.storage)
    if outcome == "gone":  # deleted while we worked: leave no file behind
        await res.storage.delete(key)
        if regeneration_id is not None:
            await _give_up(res, avatar_id, regeneration_id, "The avatar was deleted")


async def _give_up(res: Any, avatar_id: uuid.UUID, regeneration_id: uuid.UUID | None, error: str) -> None:
    async with transaction(res.sessionmaker) as session:
        refunded = await service.mark_failed(session, avatar_id=avatar_id, regeneration_id=regeneration_id,
                                             error=error, storage=res.storage)
    log.warning("avatar %s %s failed (refunded now: %s): %s", avatar_id,
                "creation" if regeneration_id is None else f"thumbnail {regeneration_id}", refunded, error)


async def make_avatar(ctx: dict[str, Any], *, avatar_id: str, regeneration_id: str | None = None) -> None:
    res = ctx["res"]
    avatar = uuid.UUID(avatar_id)
    regeneration = uuid.UUID(regeneration_id) if regeneration_id else None
    tries = ctx.get("job_try", 1)
    try:
        await _make(res, avatar, regeneration)
    except ProviderError as exc:
        if exc.transient and tries < MAX_TRIES:
            log.warning("avatar %s: %s %s (try %d), retrying", avatar, exc.code, exc.message, tries)
            raise Retry(defer=min(2 ** tries, 30)) from exc
        log.warning("avatar %s: provider %s (%s)", avatar, exc.code, exc.message)
        await _give_up(res, avatar, regeneration, exc.user_message)
    except asyncio.CancelledError:
        stopping = ctx.get("stopping")
        if stopping is None or not stopping.is_set():  # a timeout: settle the money before arq moves on
            await asyncio.shield(_give_up(res, avatar, regeneration, "The avatar job was interrupted"))
        raise  # on a worker shutdown arq queues the job again at once; every step is repeatable
    except Exception as exc:
        if is_transient(exc):  # the database or Redis is away: not the avatar's fault
            log.warning("avatar %s interrupted (%r), retrying", avatar, exc)
            raise Retry(defer=2) from exc
        if tries < MAX_TRIES:
            log.exception("avatar %s failed (try %d), retrying", avatar, tries)
            raise Retry(defer=min(2 ** tries, 30)) from exc
        await _give_up(res, avatar, regeneration, "The avatar could not be created")


async def sweep_avatars(ctx: dict[str, Any]) -> int:
    """Re-queue avatars (and new thumbnails) whose job went missing; fail and refund those stuck far too long."""
    res = ctx["res"]
    async with transaction(res.sessionmaker) as session:
        stuck = await service.stuck_avatars(session, older_than_seconds=STUCK_AFTER_SECONDS)
        hopeless = set(await service.stuck_avatars(session, older_than_seconds=FAIL_AFTER_SECONDS))
    for avatar_id, regeneration_id in stuck:
        if (avatar_id, regeneration_id) in hopeless:
            await _give_up(res, avatar_id, regeneration_id, "The avatar took too long to create")
        else:
            await service.enqueue_make(res.queue, avatar_id=avatar_id, regeneration_id=regeneration_id)
    return len(stuck)


# arq must not give up first: shutdowns and lost dependencies queue the job again without a failure.
AVATAR_JOB = func(make_avatar, name=service.MAKE_AVATAR_JOB, max_tries=100, timeout=300)
