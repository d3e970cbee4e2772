"""Avatar logic: create (screened, limited, charged), update, delete, regenerate, and the
state changes the worker makes (ready, or failed + refund)."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from sqlalchemy import delete, insert, literal, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Avatar, CreditTransaction
from db.session import after_commit
from server import activity
from server.adapters.storage.base import Storage, avatar_thumbnail_key
from server.auth.current_user import CurrentUser
from server.avatars import queries
from server.avatars.schemas import AvatarCreateIn, AvatarUpdateIn
from server.billing.queries import subscription_and_plan
from server.credits import ledger
from server.credits.account import lock_account
from server.credits.costs import cost_of
from server.errors import AvatarLimitReached, Conflict, NotFound
from server.moderation import Moderator
from server.queueing import enqueue
from server.realtime import outbox
from server.realtime.events import AvatarUpdated

log = logging.getLogger(__name__)
MAKE_AVATAR_JOB = "make_avatar"
_SCREENED = ("name", "age", "description", "appearance", "personality", "style")
_SCREENED_KEYS = frozenset(_SCREENED)


def charge_key(avatar_id: uuid.UUID | str, regeneration_id: uuid.UUID | str | None = None) -> str:
    if regeneration_id is None:
        return f"avatar:{avatar_id}:charge"
    return f"avatar:{avatar_id}:thumbnail:{regeneration_id}:charge"


def job_id(avatar_id: uuid.UUID | str, regeneration_id: uuid.UUID | str | None = None) -> str:
    return charge_key(avatar_id, regeneration_id).removesuffix(":charge") + ":job"


async def enqueue_make(queue: ArqRedis, *, avatar_id: uuid.UUID, regeneration_id: uuid.UUID | None = None) -> None:
    """Queue the profile + thumbnail job (a duplicate of a queued job is dropped by arq)."""
    await enqueue(queue, MAKE_AVATAR_JOB, avatar_id=str(avatar_id),
                  regeneration_id=str(regeneration_id) if regeneration_id else None,
                  job_id=job_id(avatar_id, regeneration_id))


async def avatar_limit(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    """How many avatars the user has, may have (plan avatar_limit), and the plan."""
    _, plan = await subscription_and_plan(session, user_id=user_id)
    used = await queries.count_avatars(session, user_id=user_id)
    limit = int(plan["avatar_limit"])
    return {"used": used, "limit": limit, "remaining": max(0, limit - used), "plan_id": plan["id"]}


async def get_avatar(session: AsyncSession, *, user_id: uuid.UUID, avatar_id: uuid.UUID,
                     storage: Storage) -> dict[str, Any]:
    """One of the user's avatars; NotFound for anyone else's."""
    row = await queries.avatar_row(session, user_id=user_id, avatar_id=avatar_id)
    if row is None:
        raise NotFound("Avatar not found")
    return await queries.avatar_object(row, storage=storage)


async def list_avatars(reader: asyncpg.Connection, *, user_id: uuid.UUID, page: int, limit: int,
                       search: str | None, storage: Storage) -> dict[str, Any]:
    """A page of the user's avatars, newest first."""
    rows, total = await queries.avatar_page(reader, user_id=user_id, offset=(page - 1) * limit,
                                            limit=limit, search=search)
    return {"items": await queries.avatar_objects(rows, storage=storage), "total": total,
            "page": page, "limit": limit}


async def avatar_stats(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    """Counts by status, content made with avatars, the most used ones, and the limit."""
    return {**await queries.avatar_usage(session, user_id=user_id),
            "limit": await avatar_limit(session, user_id=user_id)}


async def screen_create(moderator: Moderator, user: CurrentUser, data: AvatarCreateIn) -> None:
    """A new avatar's words through both layers; call it before any statement (no connection held)."""
    user.require_verified()
    await moderator.screen(user_id=user.id, context="avatar", fields=_screened(data.model_dump()))


async def create_avatar(session: AsyncSession, *, user: CurrentUser, data: AvatarCreateIn,
                        storage: Storage, queue: ArqRedis, moderator: Moderator) -> dict[str, Any]:
    """Insert the avatar (creating) and charge for it in one transaction; the job does the rest."""
    user.require_verified()
    await screen_create(moderator, user, data)
    await lock_account(session, user_id=user.id)  # also: two creates never see one free slot
    limits = await avatar_limit(session, user_id=user.id)
    if limits["remaining"] <= 0:
        raise AvatarLimitReached(
            f"Your {limits['plan_id']} plan allows {limits['limit']} avatar(s); delete one or upgrade",
            details=[{"used": limits["used"], "limit": limits["limit"], "plan_id": limits["plan_id"]}],
        )
    avatar_id = uuid.uuid4()
    await session.execute(insert(Avatar).values(
        id=avatar_id, user_id=user.id, name=data.name, age=data.age, description=data.description,
        appearance=data.appearance or {}, personality=data.personality, style=data.style,
        seed=secrets.randbelow(2**31), status="creating",
    ))
    await ledger.spend(session, user_id=user.id, amount=cost_of("avatar"), key=charge_key(avatar_id),
                       reason=f"Avatar {data.name}", reference_id=str(avatar_id))
    await activity.record(session, user_id=user.id, type="avatar.created",
                          message=f"Avatar {data.name} is being created",
                          data={"avatar_id": str(avatar_id)})
    after_commit(session, lambda: enqueue_make(queue, avatar_id=avatar_id))
    row = await queries.avatar_row(session, user_id=user.id, avatar_id=avatar_id)
    return await queries.avatar_object(row, storage=storage)


async def update_avatar(session: AsyncSession, *, user_id: uuid.UUID, avatar_id: uuid.UUID,
                        data: AvatarUpdateIn, storage: Storage, readers: asyncpg.Pool,
                        moderator: Moderator) -> dict[str, Any]:
    """Change the avatar's details, screened as the avatar they make; its generated profile stays fixed."""
    changes = data.model_dump(exclude_unset=True)
    if "appearance" in changes and changes["appearance"] is None:
        changes["appearance"] = {}
    stmt = update(Avatar).where(Avatar.id == avatar_id, Avatar.user_id == user_id)
    if _SCREENED_KEYS & changes.keys():
        # The whole avatar after the change is judged (a minor in the old description and
        # lingerie in the new style). It is read on a reader connection given back before
        # the classifier call and before this transaction's first statement, so the call
        # holds no connection; the update applies only to the version that was judged.
        async with readers.acquire() as reader:
            current = await queries.screened_fields(reader, user_id=user_id, avatar_id=avatar_id)
        if current is None:
            raise NotFound("Avatar not found")
        await moderator.screen(user_id=user_id, context="avatar", fields=_screened({**current, **changes}))
        # Applies only if the words judged are still the avatar's (the worker's own updates,
        # profile and status, do not matter here).
        stmt = stmt.where(*(getattr(Avatar, key).is_not_distinct_from(
            literal(current[key], JSONB) if key == "appearance" else current[key]) for key in _SCREENED))
    await lock_account(session, user_id=user_id)
    updated = (await session.execute(stmt.values(**changes).returning(Avatar.id))).scalar_one_or_none()
    if updated is None:
        if await queries.avatar_row(session, user_id=user_id, avatar_id=avatar_id) is None:
            raise NotFound("Avatar not found")
        raise Conflict("The avatar changed while this update was being checked; send it again")
    avatar = await get_avatar(session, user_id=user_id, avatar_id=avatar_id, storage=storage)
    outbox.emit(session, user_id, AvatarUpdated(avatar=avatar))
    return avatar


def _screened(values: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an avatar that reach a model, the age among them (it is stated to the model)."""
    return {key: values.get(key) for key in _SCREENED}


async def delete_avatar(session: AsyncSession, *, user_id: uuid.UUID, avatar_id: uuid.UUID,
                        storage: Storage) -> None:
    """Delete the avatar (its content keeps avatar_id null) and, after commit, its files."""
    await lock_account(session, user_id=user_id)
    row = (await session.execute(
        select(Avatar.status, Avatar.name, Avatar.regeneration_id).where(Avatar.id == avatar_id, Avatar.user_id == user_id)
        .with_for_update()
    )).one_or_none()
    if row is None:
        raise NotFound("Avatar not found")
    await session.execute(delete(Avatar).where(Avatar.id == avatar_id))
    if row.status == "creating":  # never delivered: give the creation charge back
        charge = charge_key(avatar_id)
        await ledger.refund(session, user_id=user_id, charge_key=charge, key=ledger.refund_key_for(charge),
                            reason=f"Avatar {row.name} deleted before it was ready")
    if row.regeneration_id is not None:  # a paid thumbnail that will never be made
        charge = charge_key(avatar_id, row.regeneration_id)
        await ledger.refund(session, user_id=user_id, charge_key=charge, key=ledger.refund_key_for(charge),
                            reason=f"Avatar {row.name} deleted before its new thumbnail was made")
    await activity.record(session, user_id=user_id, type="avatar.deleted",
                          message=f"Avatar {row.name} deleted", data={"avatar_id": str(avatar_id)})
    key = avatar_thumbnail_key(user_id, avatar_id)
    after_commit(session, lambda: _remove_file(storage, key))


async def _remove_file(storage: Storage, key: str) -> None:
    try:
        await storage.delete(key)
    except Exception:
        log.exception("could not delete %s; it is orphaned", key)


async def regenerate_thumbnail(session: AsyncSession, *, user: CurrentUser, avatar_id: uuid.UUID,
                               storage: Storage, queue: ArqRedis,
                               idempotency_key: str | None = None) -> dict[str, Any]:
    """Charge for a new thumbnail of a ready avatar and queue it."""
    user.require_verified()
    await lock_account(session, user_id=user.id)
    row = (await session.execute(
        select(Avatar.status, Avatar.name, Avatar.regeneration_id)
        .where(Avatar.id == avatar_id, Avatar.user_id == user.id).with_for_update()
    )).one_or_none()
    if row is None:
        raise NotFound("Avatar not found")
    regeneration_id = (uuid.uuid5(avatar_id, f"{user.id}:{idempotency_key}") if idempotency_key
                       else uuid.uuid4())
    if row.regeneration_id is not None and row.regeneration_id != regeneration_id:
        raise Conflict("A new thumbnail for this avatar is already being made")
    if row.status != "ready":
        raise Conflict(f"Only a ready avatar gets a new thumbnail; this one is {row.status}")
    await ledger.spend(session, user_id=user.id, amount=cost_of("avatar_thumbnail"),
                       key=charge_key(avatar_id, regeneration_id),
                       reason=f"New thumbnail for {row.name}", reference_id=str(avatar_id))
    await session.execute(update(Avatar).where(Avatar.id == avatar_id).values(regeneration_id=regeneration_id))
    # Queued again even when the charge was made before (a retry of the same request): a
    # job already queued keeps its id and arq drops the copy.
    after_commit(session, lambda: enqueue_make(queue, avatar_id=avatar_id, regeneration_id=regeneration_id))
    return await get_avatar(session, user_id=user.id, avatar_id=avatar_id, storage=storage)


# --- state changes made by the worker -------------------------------------------------------

async def save_profile(session: AsyncSession, *, avatar_id: uuid.UUID, profile: dict[str, Any]) -> dict[str, Any] | None:
    """Keep the first profile made for this avatar (a rerun reuses it); None if it is gone."""
    await session.execute(update(Avatar).where(Avatar.id == avatar_id, Avatar.profile.is_(None))
                          .values(profile=profile))
    return (await session.execute(select(Avatar.profile).where(Avatar.id == avatar_id))).scalar_one_or_none()


async def _publish(session: AsyncSession, *, row: Mapping[str, Any], storage: Storage) -> dict[str, Any]:
    avatar = await queries.avatar_object(row, storage=storage)
    outbox.emit(session, row["user_id"], AvatarUpdated(avatar=avatar))
    return avatar


async def mark_ready(session: AsyncSession, *, avatar_id: uuid.UUID, thumbnail_key: str,
                     regeneration_id: uuid.UUID | None, storage: Storage) -> str:
    """Record the stored thumbnail; 'updated', 'settled' (a rerun) or 'gone' (deleted)."""
    owner = (await session.execute(select(Avatar.user_id).where(Avatar.id == avatar_id))).scalar_one_or_none()
    if owner is None:
        return "gone"
    await lock_account(session, user_id=owner)
    stmt = update(Avatar).where(Avatar.id == avatar_id)
    if regeneration_id is None:
        stmt = stmt.where(Avatar.status == "creating").values(status="ready", error=None,
                                                              thumbnail_key=thumbnail_key)
    else:
        stmt = stmt.where(Avatar.status == "ready", Avatar.regeneration_id == regeneration_id).values(
            thumbnail_key=thumbnail_key, regeneration_id=None)
    hit = (await session.execute(stmt.returning(Avatar.id))).scalar_one_or_none()
    row = await queries.avatar_row_by_id(session, avatar_id)
    if row is None:
        return "gone"
    if hit is None:
        return "settled"
    avatar = await _publish(session, row=row, storage=storage)
    message = f"Avatar {avatar['name']} is ready" if regeneration_id is None else f"New thumbnail for {avatar['name']}"
    await activity.record(session, user_id=row["user_id"],
                          type="avatar.ready" if regeneration_id is None else "avatar.thumbnail_updated",
                          message=message, data={"avatar_id": str(avatar_id)})
    return "updated"


async def mark_failed(session: AsyncSession, *, avatar_id: uuid.UUID, regeneration_id: uuid.UUID | None,
                      error: str, storage: Storage) -> bool:
    """Fail the creation (or drop the regeneration) and refund its charge once; True if refunded now."""
    error = error[:1000]
    owner = (await session.execute(
        select(CreditTransaction.user_id).where(CreditTransaction.idempotency_key == charge_key(avatar_id, regeneration_id))
    )).scalar_one_or_none()
    if owner is None:
        return False
    await lock_account(session, user_id=owner)
    if regeneration_id is not None:
        await session.execute(update(Avatar).where(Avatar.id == avatar_id, Avatar.regeneration_id == regeneration_id)
                              .values(regeneration_id=None))
    if regeneration_id is None:
        hit = (await session.execute(
            update(Avatar).where(Avatar.id == avatar_id, Avatar.status == "creating")
            .values(status="failed", error=error).returning(Avatar.id)
        )).scalar_one_or_none()
        if hit is None:
            return False  # already ready, failed, or deleted (deletion refunds by itself)
    charge = charge_key(avatar_id, regeneration_id)
    refund = await ledger.refund(session, user_id=owner, charge_key=charge, key=ledger.refund_key_for(charge),
                                 reason="Avatar creation failed" if regeneration_id is None else "Thumbnail failed")
    row = await queries.avatar_row_by_id(session, avatar_id)
    if row is not None:
        avatar = await _publish(session, row=row, storage=storage)
        await activity.record(
            session, user_id=owner, type="avatar.failed" if regeneration_id is None else "avatar.thumbnail_failed",
            message=(f"Avatar {avatar['name']} could not be created" if regeneration_id is None
                     else f"New thumbnail for {avatar['name']} failed") + "; credits refunded",
            data={"avatar_id": str(avatar_id), "error": error},
        )
    return refund is not None and refund.created


async def regeneration_refunded(session: AsyncSession, *, avatar_id: uuid.UUID, regeneration_id: uuid.UUID) -> bool:
    found = await session.execute(select(CreditTransaction.id).where(
        CreditTransaction.idempotency_key == ledger.refund_key_for(charge_key(avatar_id, regeneration_id))))
    return found.first() is not None


async def stuck_avatars(session: AsyncSession, *, older_than_seconds: int
                        ) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """(avatar, regeneration) still being made long after they were asked for (a job may be lost)."""
    rows = await session.execute(
        select(Avatar.id, Avatar.regeneration_id)
        .where((Avatar.status == "creating") | Avatar.regeneration_id.is_not(None),
               Avatar.updated_at < text(f"now() - interval '{int(older_than_seconds)} seconds'"))
        .order_by(Avatar.updated_at).limit(100)
    )
    return [(row.id, row.regeneration_id) for row in rows]
