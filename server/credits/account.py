"""The user's account row (user_credits) is the user's lock: taken first by every write
that touches their money, content, avatars or events (docs/architecture.md, lock order)."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_LOCK = text("SELECT 1 FROM user_credits WHERE user_id = :user_id FOR UPDATE")
_OPEN = text("INSERT INTO user_credits (user_id) VALUES (:user_id) ON CONFLICT DO NOTHING")


async def lock_account(session: AsyncSession, *, user_id: uuid.UUID) -> None:
    """Lock the user's account row for the rest of the transaction (once per transaction)."""
    locked: set = session.info.setdefault("locked_accounts", set())
    if user_id in locked:
        return
    if (await session.execute(_LOCK, {"user_id": user_id})).first() is None:
        await session.execute(_OPEN, {"user_id": user_id})
        await session.execute(_LOCK, {"user_id": user_id})
    locked.add(user_id)
