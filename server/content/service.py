"""Generation requests: charge and queue in one transaction; cancel, retry, delete."""

from __future__ import annotations

import uuid
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Avatar
from db.models import GeneratedContent as C
from db.session import after_commit
from server import activity
from server.adapters.storage import Storage
from server.auth.current_user import CurrentUser
from server.billing.plans import active_generation_limit
from server.billing.queries import subscription_and_plan
from server.content.queries import COLUMNS, UNFINISHED, render
from server.content.schemas import GenerateImageIn, GenerateVideoIn
from server.credits import ledger
from server.credits.account import lock_account
from server.credits.costs import cost_of
from server.errors import Conflict, NotFound, TooManyActiveGenerations
from server.moderation import Moderator, screen
from server.queueing import enqueue_generation
from server.realtime import outbox
from server.realtime.events import GenerationProgress

JOB_FOR_KIND = {"image": "generate_image", "video": "generate_video"}


def charge_key(content_id: uuid.UUID, round_: int) -> str:
    return f"content:{content_id}:charge" + (f":{round_}" if round_ else "")


def enqueue_after_commit(
    session: AsyncSession, queue: ArqRedis, *, kind: str, content_id: uuid.UUID, job_id: str,
    user_id: uuid.UUID,
) -> None:
    """Queue the job, in the user's fair turn, once the content row and its charge are committed
    (the sweep covers a miss)."""
    after_commit(session, lambda: enqueue_generation(queue, function=JOB_FOR_KIND[kind], kind=kind,
                                                     content_id=content_id, job_id=job_id, user_id=user_id))


async def _within_active_limit(session: AsyncSession, *, user_id: uuid.UUID) -> None:
    """Refuse a generation past the plan's cap on queued + processing ones.

    The caller holds the account lock, which every move into or out of queued/processing
    takes too, so concurrent requests cannot pass the cap together.
    """
    _, plan = await subscription_and_plan(session, user_id=user_id)
    limit = active_generation_limit(plan["id"])
    active = (await session.execute(
        select(func.count()).select_from(C).where(C.user_id == user_id, C.status.in_(UNFINISHED))
    )).scalar_one()
    if active >= limit:
        raise TooManyActiveGenerations(active=active, limit=limit, plan_id=plan["id"])


async def _own_usable_avatar(session: AsyncSession, *, user_id: uuid.UUID, avatar_id: uuid.UUID) -> None:
    """The user's avatar, ready or still being created (the job waits for it); not a failed one."""
    status = (
        await session.execute(select(Avatar.status).where(Avatar.id == avatar_id, Avatar.user_id == user_id))
    ).scalar_one_or_none()
    if status is None:
        raise NotFound("Avatar not found", details=[{"field": "avatar_id", "message": "not found"}])
    if status == "failed":
        raise Conflict("The avatar failed to be created; regenerate or delete it",
                       details=[{"field": "avatar_id", "message": "avatar is failed"}])


async def _own_completed_image(session: AsyncSession, *, user_id: uuid.UUID, content_id: uuid.UUID) -> None:
    row = (
        await session.execute(select(C.type, C.status).where(C.id == content_id, C.user_id == user_id))
    ).one_or_none()
    if row is None:
        raise NotFound("Source content not found",
                       details=[{"field": "source_content_id", "message": "not found"}])
    if row.type != "image" or row.status != "completed":
        raise Conflict("The source must be one of your completed images",
                       details=[{"field": "source_content_id", "message": f"{row.type} is {row.status}"}])


async def screen_request(moderator: Moderator, user: CurrentUser, request: GenerateImageIn | GenerateVideoIn) -> None:
    """The prompt through both layers; call it before any statement (the classifier holds no connection)."""
    user.require_verified()
    await moderator.screen(user_id=user.id, context="prompt", fields={"prompt": request.prompt})


async def create_generation(
    session: AsyncSession, *, user: CurrentUser, request: GenerateImageIn | GenerateVideoIn,
    queue: ArqRedis, storage: Storage, moderator: Moderator,
) -> dict[str, Any]:
    """Insert the content (queued) and charge for it in this transaction; the job follows commit."""
    user.require_verified()
    await screen_request(moderator, user, request)
    kind = "video" if isinstance(request, GenerateVideoIn) else "image"
    if request.avatar_id is not None:
        await _own_usable_avatar(session, user_id=user.id, avatar_id=request.avatar_id)
    params: dict[str, Any] = {"aspect_ratio": request.aspect_ratio}
    if isinstance(request, GenerateVideoIn):
        params["duration_seconds"] = request.duration_seconds
        if request.source_content_id is not None:
            await _own_completed_image(session, user_id=user.id, content_id=request.source_content_id)
            params["source_content_id"] = str(request.source_content_id)
    await lock_account(session, user_id=user.id)
    await _within_active_limit(session, user_id=user.id)
    content_id = uuid.uuid4()
    cost = cost_of(kind, request.quality)
    key = charge_key(content_id, 0)
    job_id = str(content_id)
    row = (
        await session.execute(
            insert(C).values(
                id=content_id, user_id=user.id, avatar_id=request.avatar_id, type=kind, status="queued",
                prompt=request.prompt, quality=request.quality, params=params, credits_cost=cost,
                charge_key=key, job_id=job_id, stage="queued",
            ).returning(*COLUMNS)
        )
    ).mappings().one()
    await ledger.spend(session, user_id=user.id, amount=cost, key=key,
                       reason=f"{kind.capitalize()} generation", reference_id=str(content_id))
    await activity.record(session, user_id=user.id, type="content.queued",
                          message=f"{kind.capitalize()} generation queued",
                          data={"content_id": str(content_id), "type": kind, "credits": cost})
    enqueue_after_commit(session, queue, kind=kind, content_id=content_id, job_id=job_id, user_id=user.id)
    return await render(row, storage)


async def _lock(session: AsyncSession, *, user_id: uuid.UUID, content_id: uuid.UUID) -> Any:
    await lock_account(session, user_id=user_id)  # the lock order: the account row first
    row = (
        await session.execute(
            select(*COLUMNS, C.charge_key).where(C.id == content_id, C.user_id == user_id).with_for_update()
        )
    ).mappings().one_or_none()
    if row is None:
        raise NotFound("Content not found")
    return row


async def refund_generation(session: AsyncSession, *, user_id: uuid.UUID, charge: str | None,
                            reason: str) -> int:
    """Give back the current charge of a generation (once); the credits refunded."""
    if not charge:
        return 0
    entry = await ledger.refund(session, user_id=user_id, charge_key=charge, key=ledger.refund_key_for(charge),
                                reason=reason)
    return entry.amount if entry is not None else 0


async def cancel(
    session: AsyncSession, *, user_id: uuid.UUID, content_id: uuid.UUID, storage: Storage
) -> dict[str, Any]:
    """Queued or processing -> canceled, refunded; a late provider result will be discarded."""
    row = await _lock(session, user_id=user_id, content_id=content_id)
    if row["status"] not in UNFINISHED:
        raise Conflict(f"Only queued or processing content can be canceled; this is {row['status']}")
    updated = (
        await session.execute(
            update(C).where(C.id == content_id)
            .values(status="canceled", stage="canceled", error="Canceled by the user",
                    completed_at=func.now(), deadline_at=None)
            .returning(*COLUMNS)
        )
    ).mappings().one()
    refunded = await refund_generation(session, user_id=user_id, charge=row["charge_key"],
                                       reason=f"{row['type'].capitalize()} generation canceled")
    await activity.record(session, user_id=user_id, type="content.canceled",
                          message=f"{row['type'].capitalize()} generation canceled",
                          data={"content_id": str(content_id), "refunded": refunded})
    outbox.emit_ephemeral(session, user_id, GenerationProgress(
        content_id=content_id, status="canceled", progress=updated["progress"], stage="canceled"))
    return await render(updated, storage)


async def retry(
    session: AsyncSession, *, user: CurrentUser, content_id: uuid.UUID, queue: ArqRedis,
    storage: Storage,
) -> dict[str, Any]:
    """Failed or canceled -> queued again, charged again under a new key."""
    user.require_verified()
    row = await _lock(session, user_id=user.id, content_id=content_id)
    # The prompt was screened when it was first sent; the rules may have grown since.
    screen(user_id=user.id, context="prompt", fields={"prompt": row["prompt"]})
    if row["status"] not in ("failed", "canceled"):
        raise Conflict(f"Only failed or canceled content can be retried; this is {row['status']}")
    await _within_active_limit(session, user_id=user.id)
    round_ = int(row["params"].get("retries", 0)) + 1
    key = charge_key(content_id, round_)
    job_id = f"{content_id}:retry{round_}"
    updated = (
        await session.execute(
            update(C).where(C.id == content_id)
            .values(status="queued", stage="queued", progress=0, error=None, attempts=0,
                    storage_key=None, thumbnail_key=None, provider_request_id=None,
                    started_at=None, completed_at=None, deadline_at=None, charge_key=key,
                    job_id=job_id, params={**row["params"], "retries": round_})
            .returning(*COLUMNS)
        )
    ).mappings().one()
    await ledger.spend(session, user_id=user.id, amount=row["credits_cost"], key=key,
                       reason=f"{row['type'].capitalize()} generation retry", reference_id=str(content_id))
    await activity.record(session, user_id=user.id, type="content.queued",
                          message=f"{row['type'].capitalize()} generation retried",
                          data={"content_id": str(content_id), "type": row["type"], "retry": round_})
    enqueue_after_commit(session, queue, kind=row["type"], content_id=content_id, job_id=job_id,
                         user_id=user.id)
    return await render(updated, storage)


async def delete_content(
    session: AsyncSession, *, user_id: uuid.UUID, content_id: uuid.UUID, storage: Storage
) -> None:
    """Remove the content (canceled and refunded first if unfinished) and its files."""
    row = await _lock(session, user_id=user_id, content_id=content_id)
    if row["status"] in UNFINISHED:
        await cancel(session, user_id=user_id, content_id=content_id, storage=storage)
    await session.execute(delete(C).where(C.id == content_id))
    await activity.record(session, user_id=user_id, type="content.deleted",
                          message=f"{row['type'].capitalize()} deleted", data={"content_id": str(content_id)})
    keys = [k for k in (row["storage_key"], row["thumbnail_key"]) if k]

    async def remove_files() -> None:
        for key in keys:
            await storage.delete(key)

    after_commit(session, remove_files)
