"""The activity feed: one row per thing a user should see, announced as a durable `activity` event.
Rows come from `record`, or from the ledger's movement statement (one round trip); both `announce`."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import ActivityEvent
from server.realtime import outbox
from server.realtime.events import ActivityPosted


async def record(
    session: AsyncSession, *, user_id: uuid.UUID, type: str, message: str,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add an activity row in the current transaction; its `activity` event is durable."""
    row = (
        await session.execute(
            insert(ActivityEvent)
            .values(user_id=user_id, type=type, message=message, data=data or {})
            .returning(ActivityEvent.id, ActivityEvent.type, ActivityEvent.message,
                       ActivityEvent.data, ActivityEvent.created_at)
        )
    ).mappings().one()
    return announce(session, user_id, dict(row))


def announce(session: AsyncSession, user_id: uuid.UUID, activity: dict[str, Any]) -> dict[str, Any]:
    """The durable `activity` event of a row just added ({id, type, message, data, created_at})."""
    outbox.emit(session, user_id, ActivityPosted(activity=activity))
    return activity
