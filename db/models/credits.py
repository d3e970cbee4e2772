"""Cached balance and the append-only ledger it must always equal."""

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at, updated_at, uuid_pk

TRANSACTION_TYPES = ("grant", "purchase", "spend", "refund", "bonus", "adjustment")


class UserCredits(Base):
    __tablename__ = "user_credits"

    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), primary_key=True
    )
    balance: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    lifetime_granted: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    lifetime_spent: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    # The user's last durable event id (server/realtime/outbox.py); this row is the user's lock.
    event_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")
    updated_at: Mapped[datetime] = updated_at()

    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_not_negative"),
        CheckConstraint("lifetime_granted >= 0 AND lifetime_spent >= 0", name="lifetime_not_negative"),
    )


class CreditTransaction(Base):
    """A ledger row. UPDATE and DELETE are refused by a trigger (see the migration)."""

    __tablename__ = "credit_transactions"

    id: Mapped[uuid.UUID] = uuid_pk()
    # RESTRICT: money history outlives nothing by accident; accounts are deactivated, not deleted.
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), nullable=False
    )
    amount: Mapped[int] = mapped_column(Integer, nullable=False)
    balance_after: Mapped[int] = mapped_column(Integer, nullable=False)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    reference_id: Mapped[str | None] = mapped_column(String(255))
    idempotency_key: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    # A refund points at its charge; UNIQUE makes a second refund of one charge impossible.
    refund_of: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("credit_transactions.id", ondelete="RESTRICT"), unique=True
    )
    created_at: Mapped[datetime] = created_at()

    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
        CheckConstraint(f"type IN {TRANSACTION_TYPES!r}", name="type"),
        CheckConstraint("(type = 'spend') = (amount < 0) OR type = 'adjustment'", name="sign_matches_type"),
        Index("ix_credit_transactions_user_id_created_at", "user_id", "created_at"),
        Index(
            "ix_credit_transactions_spend_by_day", "user_id", "created_at",
            postgresql_where="type = 'spend'", postgresql_include=["amount"],
        ),
    )
