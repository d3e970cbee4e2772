"""The credits ledger: grant, spend, refund. Each is idempotent by key and safe under concurrency.

Every movement takes the user's balance row lock first, so all movements of one user
are serialised and the idempotency check that follows sees every committed row. Then
one statement inserts the ledger row and moves the cached balance together; the
CHECK (balance >= 0) and the UNIQUE idempotency key are the last line of defence.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from server import activity
from server.errors import InsufficientCredits, ValidationFailed
from server.realtime.events import CreditsUpdated
from server.realtime.publisher import notify

_COLUMNS = "id, user_id, amount, balance_after, type, reason, reference_id, idempotency_key, refund_of, created_at"

_LOCK = text("SELECT balance FROM user_credits WHERE user_id = :user_id FOR UPDATE")
_OPEN_ACCOUNT = text("INSERT INTO user_credits (user_id) VALUES (:user_id) ON CONFLICT DO NOTHING")
_EXISTING = text(f"SELECT {_COLUMNS} FROM credit_transactions WHERE idempotency_key = :key")
_MOVE = text(f"""
WITH moved AS (
    UPDATE user_credits SET
        balance = balance + CAST(:amount AS integer),
        lifetime_granted = lifetime_granted + CAST(:granted AS integer),
        lifetime_spent = GREATEST(lifetime_spent + CAST(:spent AS integer), 0),
        updated_at = now()
    WHERE user_id = :user_id AND balance + CAST(:amount AS integer) >= 0
    RETURNING balance
)
INSERT INTO credit_transactions
    (user_id, amount, balance_after, type, reason, reference_id, idempotency_key, refund_of)
SELECT CAST(:user_id AS uuid), CAST(:amount AS integer), balance, CAST(:type AS varchar),
       CAST(:reason AS text), CAST(:reference_id AS varchar), CAST(:key AS varchar),
       CAST(:refund_of AS uuid)
FROM moved
RETURNING {_COLUMNS}
""")
_FIND_CHARGE = text(f"""
SELECT {_COLUMNS} FROM credit_transactions
WHERE idempotency_key = :charge_key AND user_id = :user_id AND type = 'spend'
""")
_FIND_REFUND = text(f"SELECT {_COLUMNS} FROM credit_transactions WHERE refund_of = :charge_id")

ACTIVITY = {
    "grant": ("credits.granted", "{amount} credits added"),
    "purchase": ("credits.purchased", "{amount} credits purchased"),
    "bonus": ("credits.granted", "{amount} bonus credits added"),
    "spend": ("credits.spent", "{amount} credits spent"),
    "refund": ("credits.refunded", "{amount} credits refunded"),
    "adjustment": ("credits.adjusted", "Balance adjusted by {amount} credits"),
}


@dataclass(frozen=True)
class LedgerEntry:
    id: uuid.UUID
    user_id: uuid.UUID
    amount: int
    balance_after: int
    type: str
    reason: str | None
    reference_id: str | None
    idempotency_key: str
    refund_of: uuid.UUID | None
    created_at: datetime
    created: bool  # False when the key had already been applied


def _entry(row, *, created: bool) -> LedgerEntry:
    return LedgerEntry(**dict(row._mapping), created=created)


async def _lock_balance(session: AsyncSession, user_id: uuid.UUID) -> int:
    balance = (await session.execute(_LOCK, {"user_id": user_id})).scalar_one_or_none()
    if balance is None:
        await session.execute(_OPEN_ACCOUNT, {"user_id": user_id})
        balance = (await session.execute(_LOCK, {"user_id": user_id})).scalar_one()
    return balance


async def _existing(session: AsyncSession, key: str) -> LedgerEntry | None:
    row = (await session.execute(_EXISTING, {"key": key})).one_or_none()
    return _entry(row, created=False) if row else None


async def _move(
    session: AsyncSession, *, user_id: uuid.UUID, amount: int, type: str, key: str,
    reason: str | None, reference_id: str | None, refund_of: uuid.UUID | None = None,
    balance: int,
) -> LedgerEntry:
    params = {
        "user_id": user_id, "amount": amount, "type": type, "key": key, "reason": reason,
        "reference_id": reference_id, "refund_of": refund_of,
        "granted": amount if type in ("grant", "purchase", "bonus") else 0,
        "spent": -amount if type in ("spend", "refund") else 0,
    }
    row = (await session.execute(_MOVE, params)).one_or_none()
    if row is None:
        raise InsufficientCredits(required=-amount, balance=balance)
    entry = _entry(row, created=True)
    notify(session, user_id, CreditsUpdated(
        balance=entry.balance_after, delta=entry.amount, reason=reason, transaction_id=entry.id,
    ))
    activity_type, message = ACTIVITY[type]
    await activity.record(
        session, user_id=user_id, type=activity_type,
        message=message.format(amount=abs(amount)) + (f": {reason}" if reason else ""),
        data={"transaction_id": str(entry.id), "amount": amount, "balance": entry.balance_after,
              "reference_id": reference_id},
    )
    return entry


def _positive(amount: int) -> None:
    if not isinstance(amount, int) or amount <= 0:
        raise ValidationFailed("amount must be a positive integer",
                               details=[{"field": "amount", "message": "must be > 0"}])


async def grant(
    session: AsyncSession, *, user_id: uuid.UUID, amount: int, key: str, reason: str | None = None,
    reference_id: str | None = None, type: str = "grant",
) -> LedgerEntry:
    """Add credits once per key (type grant, purchase or bonus)."""
    _positive(amount)
    if type not in ("grant", "purchase", "bonus"):
        raise ValueError(f"not a granting type: {type}")
    balance = await _lock_balance(session, user_id)
    existing = await _existing(session, key)
    if existing is not None:
        return existing
    return await _move(session, user_id=user_id, amount=amount, type=type, key=key,
                       reason=reason, reference_id=reference_id, balance=balance)


async def spend(
    session: AsyncSession, *, user_id: uuid.UUID, amount: int, key: str, reason: str | None = None,
    reference_id: str | None = None,
) -> LedgerEntry:
    """Take credits once per key; InsufficientCredits (402) if the balance is short."""
    _positive(amount)
    balance = await _lock_balance(session, user_id)
    existing = await _existing(session, key)
    if existing is not None:
        return existing
    return await _move(session, user_id=user_id, amount=-amount, type="spend", key=key,
                       reason=reason, reference_id=reference_id, balance=balance)


async def refund(
    session: AsyncSession, *, user_id: uuid.UUID, charge_key: str, key: str,
    reason: str | None = None,
) -> LedgerEntry | None:
    """Give back exactly what the charge took, at most once; None if there was no charge."""
    balance = await _lock_balance(session, user_id)
    existing = await _existing(session, key)
    if existing is not None:
        return existing
    charge = (await session.execute(_FIND_CHARGE, {"charge_key": charge_key, "user_id": user_id})).one_or_none()
    if charge is None:
        return None
    earlier = (await session.execute(_FIND_REFUND, {"charge_id": charge.id})).one_or_none()
    if earlier is not None:
        return _entry(earlier, created=False)
    return await _move(session, user_id=user_id, amount=-charge.amount, type="refund", key=key,
                       reason=reason, reference_id=charge.reference_id, refund_of=charge.id,
                       balance=balance)
