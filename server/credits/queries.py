"""Read side of credits (Core selects returning mappings)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import UserCredits


async def get_credits(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    """The cached balance and lifetime totals (zeros for an account with none yet)."""
    row = (
        await session.execute(
            select(UserCredits.balance, UserCredits.lifetime_granted, UserCredits.lifetime_spent)
            .where(UserCredits.user_id == user_id)
        )
    ).mappings().one_or_none()
    return dict(row) if row else {"balance": 0, "lifetime_granted": 0, "lifetime_spent": 0}
