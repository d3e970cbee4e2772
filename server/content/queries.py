"""Read side of content: Core selects rendered to API objects with signed URLs."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import GeneratedContent as C
from server.adapters.storage import Storage
from server.errors import NotFound

COLUMNS = (
    C.id, C.user_id, C.avatar_id, C.type, C.status, C.progress, C.stage, C.prompt,
    C.enhanced_prompt, C.quality, C.params, C.credits_cost, C.storage_key, C.thumbnail_key,
    C.error, C.error_code, C.attempts, C.created_at, C.started_at, C.completed_at, C.updated_at,
)
UNFINISHED = ("queued", "processing")


async def render(row: Any, storage: Storage) -> dict[str, Any]:
    """The API.md content object (signed url/thumbnail_url once the file exists)."""
    item = dict(row)
    storage_key = item.pop("storage_key")
    thumbnail_key = item.pop("thumbnail_key")
    item.pop("user_id", None)
    item["url"] = await storage.signed_url(storage_key) if storage_key else None
    item["thumbnail_url"] = await storage.signed_url(thumbnail_key) if thumbnail_key else None
    return item


async def get_content(
    session: AsyncSession, *, user_id: uuid.UUID, content_id: uuid.UUID, storage: Storage
) -> dict[str, Any]:
    row = (
        await session.execute(select(*COLUMNS).where(C.id == content_id, C.user_id == user_id))
    ).mappings().one_or_none()
    if row is None:
        raise NotFound("Content not found")
    return await render(row, storage)


async def list_content(
    session: AsyncSession, *, user_id: uuid.UUID, storage: Storage, page: int, limit: int,
    type: str | None = None, status: str | None = None, avatar_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """The user's content, newest first, optionally filtered."""
    where = [C.user_id == user_id]
    if type:
        where.append(C.type == type)
    if status:
        where.append(C.status == status)
    if avatar_id:
        where.append(C.avatar_id == avatar_id)
    total = (await session.execute(select(func.count()).select_from(C).where(*where))).scalar_one()
    rows = (
        await session.execute(
            select(*COLUMNS).where(*where).order_by(C.created_at.desc(), C.id.desc())
            .limit(limit).offset((page - 1) * limit)
        )
    ).mappings().all()
    return {"items": [await render(r, storage) for r in rows], "total": total, "page": page, "limit": limit}


async def content_stats(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    """Counts by type and status, and credits spent on content that was not refunded."""
    rows = (
        await session.execute(
            select(C.type, C.status, func.count().label("n"),
                   func.coalesce(func.sum(C.credits_cost), 0).label("cost"))
            .where(C.user_id == user_id).group_by(C.type, C.status)
        )
    ).all()
    by_type = {"image": 0, "video": 0}
    by_status = {s: 0 for s in ("queued", "processing", "completed", "failed", "canceled")}
    spent = 0
    for row in rows:
        by_type[row.type] += row.n
        by_status[row.status] += row.n
        if row.status not in ("failed", "canceled"):
            spent += int(row.cost)
    return {"total": sum(by_type.values()), "by_type": by_type, "by_status": by_status,
            "credits_spent": spent}
