"""Read side of credits (Core selects returning mappings)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import CreditTransaction, UserCredits


async def get_credits(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    """The cached balance and lifetime totals (zeros for an account with none yet)."""
    row = (
        await session.execute(
            select(UserCredits.balance, UserCredits.lifetime_granted, UserCredits.lifetime_spent)
            .where(UserCredits.user_id == user_id)
        )
    ).mappings().one_or_none()
    return dict(row) if row else {"balance": 0, "lifetime_granted": 0, "lifetime_spent": 0}


_TRANSACTION_COLUMNS = (
    CreditTransaction.id, CreditTransaction.amount, CreditTransaction.balance_after,
    CreditTransaction.type, CreditTransaction.reason, CreditTransaction.reference_id,
    CreditTransaction.created_at,
)


async def list_transactions(
    session: AsyncSession, *, user_id: uuid.UUID, page: int, limit: int, type: str | None = None,
) -> dict[str, Any]:
    """One page of the user's ledger, newest first, with the total count."""
    where = [CreditTransaction.user_id == user_id]
    if type is not None:
        where.append(CreditTransaction.type == type)
    total = (await session.execute(select(func.count()).select_from(CreditTransaction).where(*where))).scalar_one()
    rows = await session.execute(
        select(*_TRANSACTION_COLUMNS).where(*where)
        # created_at is the statement clock (see ledger._MOVE), so it orders one user's rows.
        .order_by(CreditTransaction.created_at.desc(), CreditTransaction.id.desc())
        .limit(limit).offset((page - 1) * limit)
    )
    return {"items": [dict(r) for r in rows.mappings()], "total": total, "page": page, "limit": limit}
