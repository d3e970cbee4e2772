"""The credits ledger: grant, spend, refund. Each is idempotent by key and safe under concurrency."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from server import activity
from server.errors import Conflict, InsufficientCredits, ValidationFailed
from server.realtime import outbox
from server.realtime.events import CreditsUpdated

_COLUMNS = "id, user_id, amount, balance_after, type, reason, reference_id, idempotency_key, refund_of, created_at"

_OPEN_ACCOUNT = text("INSERT INTO user_credits (user_id) VALUES (:user_id) ON CONFLICT DO NOTHING")
_BY_KEY = text(f"SELECT {_COLUMNS} FROM credit_transactions WHERE idempotency_key = :key")
_FIND_CHARGE = text(f"""
SELECT {_COLUMNS} FROM credit_transactions
WHERE idempotency_key = :charge_key AND user_id = :user_id AND type = 'spend'
""")
_FIND_REFUND = text(f"SELECT {_COLUMNS} FROM credit_transactions WHERE refund_of = :charge_id")

# A movement is one statement: it locks the user's balance row (one user's movements are
# serialised), inserts the ledger row unless its key (or, for a refund, its charge) is taken,
# moves the cached balance and lifetime totals by exactly that row, and adds the activity row;
# CHECK (balance >= 0), the UNIQUE idempotency key and the UNIQUE refund_of back it.
# FOR UPDATE returns the newest committed balance even after waiting for another
# movement, so balance_after is computed from it; a key taken meanwhile is caught by
# ON CONFLICT (which sees committed rows the statement's snapshot does not), and then
# nothing is inserted, so nothing moves. The activity row rides along to keep the
# row lock held for a single round trip (the shape matches server.activity.record).
_MOVE = text(f"""
WITH locked AS (
    SELECT balance FROM user_credits WHERE user_id = :user_id FOR UPDATE
),
ins AS (
    INSERT INTO credit_transactions
        (user_id, amount, balance_after, type, reason, reference_id, idempotency_key,
         refund_of, created_at)
    SELECT CAST(:user_id AS uuid), CAST(:amount AS integer),
           locked.balance + CAST(:amount AS integer), CAST(:type AS varchar),
           CAST(:reason AS text), CAST(:reference_id AS varchar), CAST(:key AS varchar),
           CAST(:refund_of AS uuid), clock_timestamp()
    FROM locked
    WHERE locked.balance + CAST(:amount AS integer) >= 0
    ON CONFLICT DO NOTHING
    RETURNING {_COLUMNS}
),
moved AS (
    UPDATE user_credits SET
        balance = user_credits.balance + ins.amount,
        lifetime_granted = user_credits.lifetime_granted + CAST(:granted AS integer),
        lifetime_spent = GREATEST(user_credits.lifetime_spent + CAST(:spent AS integer), 0),
        updated_at = now()
    FROM ins
    WHERE user_credits.user_id = ins.user_id
    RETURNING user_credits.balance
),
feed AS (
    INSERT INTO activity_events (user_id, type, message, data)
    SELECT ins.user_id, CAST(:activity_type AS varchar), CAST(:activity_message AS text),
           jsonb_build_object('transaction_id', ins.id, 'amount', ins.amount,
                              'balance', ins.balance_after, 'reference_id', ins.reference_id)
    FROM ins
    RETURNING id, type, message, data, created_at
)
SELECT locked.balance AS locked_balance, (SELECT balance FROM moved) AS moved_balance,
       ins.id, ins.user_id, ins.amount, ins.balance_after, ins.type, ins.reason,
       ins.reference_id, ins.idempotency_key, ins.refund_of, ins.created_at,
       feed.id AS activity_id, feed.type AS activity_type, feed.message AS activity_message,
       feed.data AS activity_data, feed.created_at AS activity_created_at
FROM locked LEFT JOIN ins ON true LEFT JOIN feed ON true
""")

GRANT_TYPES = ("grant", "purchase", "bonus")
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
    m = row._mapping
    return LedgerEntry(
        id=m["id"], user_id=m["user_id"], amount=m["amount"], balance_after=m["balance_after"],
        type=m["type"], reason=m["reason"], reference_id=m["reference_id"],
        idempotency_key=m["idempotency_key"], refund_of=m["refund_of"],
        created_at=m["created_at"], created=created,
    )


async def _by_key(
    session: AsyncSession, *, key: str, user_id: uuid.UUID, types: tuple[str, ...]
) -> LedgerEntry | None:
    """The movement already made under `key`; a key used for another user or kind is a bug."""
    row = (await session.execute(_BY_KEY, {"key": key})).one_or_none()
    if row is None:
        return None
    if row.user_id != user_id or row.type not in types:
        raise Conflict(f"idempotency key {key!r} already belongs to another movement")
    return _entry(row, created=False)


async def _move(
    session: AsyncSession, *, user_id: uuid.UUID, amount: int, type: str, key: str,
    reason: str | None, reference_id: str | None, refund_of: uuid.UUID | None = None,
) -> LedgerEntry | int:
    """The new entry, or (when nothing was inserted) the balance seen under the lock."""
    activity_type, message = ACTIVITY[type]
    params = {
        "user_id": user_id, "amount": amount, "type": type, "key": key, "reason": reason,
        "reference_id": reference_id, "refund_of": refund_of,
        "granted": amount if type in GRANT_TYPES else 0,
        "spent": -amount if type in ("spend", "refund") else 0,
        "activity_type": activity_type,
        "activity_message": message.format(amount=abs(amount)) + (f": {reason}" if reason else ""),
    }
    row = (await session.execute(_MOVE, params)).one_or_none()
    if row is None:  # no balance row yet: open the account, then move
        await session.execute(_OPEN_ACCOUNT, {"user_id": user_id})
        row = (await session.execute(_MOVE, params)).one()
    if row.id is None:
        return row.locked_balance
    entry = _entry(row, created=True)
    if row.moved_balance != entry.balance_after:  # cannot happen while the row lock holds
        raise RuntimeError(f"ledger moved to {row.moved_balance}, row says {entry.balance_after}")
    outbox.emit(session, user_id, CreditsUpdated(
        balance=entry.balance_after, delta=entry.amount, reason=reason, transaction_id=entry.id,
    ))
    activity.announce(session, user_id, {
        "id": row.activity_id, "type": row.activity_type, "message": row.activity_message,
        "data": row.activity_data, "created_at": row.activity_created_at,
    })
    return entry


def refund_key_for(charge_key: str) -> str:
    """The idempotency key of a charge's refund: its `charge` segment becomes `refund`."""
    parts = charge_key.split(":")
    if "charge" not in parts:
        raise ValueError(f"not a charge key: {charge_key!r}")
    parts[parts.index("charge")] = "refund"
    return ":".join(parts)


def _positive(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise ValidationFailed("amount must be a positive integer",
                               details=[{"field": "amount", "message": "must be > 0"}])


async def grant(
    session: AsyncSession, *, user_id: uuid.UUID, amount: int, key: str, reason: str | None = None,
    reference_id: str | None = None, type: str = "grant",
) -> LedgerEntry:
    """Add credits once per key (type grant, purchase or bonus)."""
    _positive(amount)
    if type not in GRANT_TYPES:
        raise ValueError(f"not a granting type: {type}")
    moved = await _move(session, user_id=user_id, amount=amount, type=type, key=key,
                        reason=reason, reference_id=reference_id)
    if isinstance(moved, LedgerEntry):
        return moved
    existing = await _by_key(session, key=key, user_id=user_id, types=(type,))
    if existing is None:
        raise RuntimeError(f"grant {key!r} neither applied nor found")
    return existing


async def spend(
    session: AsyncSession, *, user_id: uuid.UUID, amount: int, key: str, reason: str | None = None,
    reference_id: str | None = None,
) -> LedgerEntry:
    """Take credits once per key; InsufficientCredits (402) if the balance is short."""
    _positive(amount)
    moved = await _move(session, user_id=user_id, amount=-amount, type="spend", key=key,
                        reason=reason, reference_id=reference_id)
    if isinstance(moved, LedgerEntry):
        return moved
    existing = await _by_key(session, key=key, user_id=user_id, types=("spend",))
    if existing is None:
        raise InsufficientCredits(required=amount, balance=moved)
    return existing


async def refund(
    session: AsyncSession, *, user_id: uuid.UUID, charge_key: str, key: str,
    reason: str | None = None,
) -> LedgerEntry | None:
    """Give back exactly what the charge took, at most once; None if there was no charge."""
    if key == charge_key:
        raise ValueError("a refund needs a key of its own")
    charge = (await session.execute(_FIND_CHARGE, {"charge_key": charge_key, "user_id": user_id})).one_or_none()
    if charge is None:
        return await _by_key(session, key=key, user_id=user_id, types=("refund",))
    moved = await _move(session, user_id=user_id, amount=-charge.amount, type="refund", key=key,
                        reason=reason, reference_id=charge.reference_id, refund_of=charge.id)
    if isinstance(moved, LedgerEntry):
        return moved
    existing = await _by_key(session, key=key, user_id=user_id, types=("refund",))
    if existing is not None:
        return existing
    earlier = (await session.execute(_FIND_REFUND, {"charge_id": charge.id})).one()
    return _entry(earlier, created=False)
