"""Read side of avatars: Core selects returning mappings, and the one avatar object renderer."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import orjson
from sqlalchemy import Select, Text, bindparam, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Avatar, GeneratedContent
from db.reader import Query
from server.adapters.storage.base import Storage

_CONTENT_COUNT = (
    select(func.count()).where(GeneratedContent.avatar_id == Avatar.id)
    .correlate(Avatar).scalar_subquery()
)
AVATAR_COLUMNS = (
    cast(Avatar.id, Text).label("id"), Avatar.name, Avatar.description, Avatar.age,
    Avatar.appearance, Avatar.personality, Avatar.style, Avatar.profile, Avatar.seed,
    Avatar.status, Avatar.error, Avatar.thumbnail_key, _CONTENT_COUNT.label("content_count"),
    Avatar.created_at, Avatar.updated_at,
)
# The list reads JSONB as text and embeds it as is (orjson.Fragment): no parse, no re-encode.
_LIST_COLUMNS = tuple(
    cast(getattr(Avatar, c.name), Text).label(c.name) if c.name in ("appearance", "profile") else c
    for c in AVATAR_COLUMNS
)
_FIELDS = ("id", "name", "description", "age", "personality", "style", "seed", "status", "error")


async def avatar_object(row: Mapping[str, Any], *, storage: Storage) -> dict[str, Any]:
    """The API.md avatar (thumbnail_url signed) from a row of AVATAR_COLUMNS; used wherever one is shown."""
    key = row["thumbnail_key"]
    avatar = {name: row[name] for name in _FIELDS}
    for name in ("appearance", "profile"):
        value = row[name]
        avatar[name] = orjson.Fragment(value) if isinstance(value, str) else value
    avatar["thumbnail_url"] = await storage.signed_url(key) if key else None
    avatar["content_count"] = row["content_count"]
    avatar["created_at"] = row["created_at"]
    avatar["updated_at"] = row["updated_at"]
    return avatar


async def avatar_objects(rows: Sequence[Mapping[str, Any]], *, storage: Storage) -> list[dict[str, Any]]:
    return [await avatar_object(row, storage=storage) for row in rows]


def _owned(user_id: uuid.UUID, avatar_id: uuid.UUID) -> Select:
    return select(*AVATAR_COLUMNS).where(Avatar.id == avatar_id, Avatar.user_id == user_id)


async def avatar_row(session: AsyncSession, *, user_id: uuid.UUID, avatar_id: uuid.UUID) -> Mapping[str, Any] | None:
    """One of the user's avatars, or None (another user's avatar is None too)."""
    return (await session.execute(_owned(user_id, avatar_id))).mappings().one_or_none()


_SCREENED_FIELDS = Query(
    select(Avatar.name, Avatar.age, Avatar.description, cast(Avatar.appearance, Text).label("appearance"),
           Avatar.personality, Avatar.style, Avatar.updated_at)
    .where(Avatar.id == bindparam("avatar_id"), Avatar.user_id == bindparam("user_id"))
)


async def screened_fields(reader: asyncpg.Connection, *, user_id: uuid.UUID,
                          avatar_id: uuid.UUID) -> dict[str, Any] | None:
    """The avatar's own words (what the content policy judges) and its version, or None."""
    row = await _SCREENED_FIELDS.fetchrow(reader, user_id=user_id, avatar_id=avatar_id)
    if row is None:
        return None
    return {**dict(row), "appearance": orjson.loads(row["appearance"]) if row["appearance"] else {}}


async def avatar_row_by_id(session: AsyncSession, avatar_id: uuid.UUID) -> Mapping[str, Any] | None:
    """An avatar whoever owns it (jobs), with its user_id."""
    stmt = select(*AVATAR_COLUMNS, Avatar.user_id).where(Avatar.id == avatar_id)
    return (await session.execute(stmt)).mappings().one_or_none()


def _page_statement(*extra: Any) -> Select:
    # count(*) OVER () gives the total with the page in one round trip.
    return (
        select(*_LIST_COLUMNS, func.count().over().label("total"))
        .where(Avatar.user_id == bindparam("user_id"), *extra)
        .order_by(Avatar.created_at.desc(), Avatar.id.desc())
        .offset(bindparam("offset")).limit(bindparam("limit"))
    )


_MATCHES = or_(Avatar.name.ilike(bindparam("pattern"), escape="\\"),
               Avatar.description.ilike(bindparam("pattern"), escape="\\"))
# Built once: the list is the hottest read.
_PAGE = Query(_page_statement())
_SEARCH_PAGE = Query(_page_statement(_MATCHES))
_COUNT = Query(select(func.count()).select_from(Avatar).where(Avatar.user_id == bindparam("user_id")))
_SEARCH_COUNT = Query(select(func.count()).select_from(Avatar)
                      .where(Avatar.user_id == bindparam("user_id"), _MATCHES))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def avatar_page(
    reader: asyncpg.Connection, *, user_id: uuid.UUID, offset: int, limit: int, search: str | None
) -> tuple[list[Mapping[str, Any]], int]:
    """(rows of this page, total) newest first; search matches name or description."""
    values: dict[str, Any] = {"user_id": user_id, "offset": offset, "limit": limit}
    page, count = _PAGE, _COUNT
    if search and search.strip():
        values["pattern"] = f"%{_escape_like(search.strip())}%"
        page, count = _SEARCH_PAGE, _SEARCH_COUNT
    rows = await page.fetch(reader, **values)
    if rows:
        return rows, rows[0]["total"]
    if offset == 0:
        return rows, 0
    return rows, await reader.fetchval(count.sql, *count.args(values))


async def count_avatars(session: AsyncSession, *, user_id: uuid.UUID) -> int:
    # A failed avatar holds no slot: it can only be deleted.
    stmt = select(func.count()).select_from(Avatar).where(Avatar.user_id == user_id, Avatar.status != "failed")
    return (await session.execute(stmt)).scalar_one()


async def avatar_usage(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    """Counts by status, content made with avatars, and the most used avatars."""
    by_status = dict((await session.execute(
        select(Avatar.status, func.count()).where(Avatar.user_id == user_id).group_by(Avatar.status)
    )).all())
    content_total = (await session.execute(
        select(func.count()).select_from(GeneratedContent)
        .join(Avatar, Avatar.id == GeneratedContent.avatar_id).where(Avatar.user_id == user_id)
    )).scalar_one()
    used = _CONTENT_COUNT.label("content_count")
    most_used = (await session.execute(
        select(cast(Avatar.id, Text).label("id"), Avatar.name, used)
        .where(Avatar.user_id == user_id).order_by(used.desc(), Avatar.created_at.desc()).limit(5)
    )).mappings().all()
    return {
        "total": sum(by_status.values()),
        "by_status": {status: by_status.get(status, 0) for status in ("creating", "ready", "failed")},
        "content_total": content_total,
        "most_used": [dict(r) for r in most_used],
    }
