"""Plans, a user's subscriptions, and the Stripe events already applied."""

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, created_at, updated_at, uuid_pk

LIVE_SUBSCRIPTION_STATUSES = ("incomplete", "trialing", "active", "past_due")


class SubscriptionPlan(Base):
    __tablename__ = "subscription_plans"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    price_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="usd")
    interval: Mapped[str] = mapped_column(String(16), nullable=False, server_default="month")
    credits_per_period: Mapped[int] = mapped_column(Integer, nullable=False)
    avatar_limit: Mapped[int] = mapped_column(Integer, nullable=False)
    features: Mapped[list] = mapped_column(JSONB, nullable=False, server_default="[]")
    stripe_price_id: Mapped[str | None] = mapped_column(String(255))
    sort_order: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()

    __table_args__ = (
        CheckConstraint("price_cents >= 0 AND credits_per_period >= 0 AND avatar_limit >= 0",
                        name="non_negative"),
    )


class UserSubscription(Base):
    __tablename__ = "user_subscriptions"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="RESTRICT"), nullable=False
    )
    plan_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("subscription_plans.id", ondelete="RESTRICT"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    current_period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # `created` of the newest Stripe event applied: older events never overwrite newer state.
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()

    __table_args__ = (
        Index("ix_user_subscriptions_user_id_created_at", "user_id", "created_at"),
        # At most one live subscription per user.
        Index(
            "uq_user_subscriptions_live_user", "user_id", unique=True,
            postgresql_where=text(f"status IN {LIVE_SUBSCRIPTION_STATUSES!r}"),
        ),
    )


class StripeEvent(Base):
    """Each Stripe event id is applied once: the insert is the lock.

    An event that cannot be applied yet (its customer, subscription or price is unknown
    here) is `parked` and retried until `retry_at` says so, then `processed` or `dropped`.
    """

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(128), nullable=False)
    stripe_created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    payload: Mapped[dict] = mapped_column(JSONB, nullable=False)
    result: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = created_at()
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="processed")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    customer_id: Mapped[str | None] = mapped_column(String(255))  # of data.object, for retries
    api_version: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint("status IN ('processed', 'parked', 'dropped')", name="status"),
        Index("ix_stripe_events_parked", "retry_at", postgresql_where=text("status = 'parked'")),
        Index("ix_stripe_events_parked_customer", "customer_id",
              postgresql_where=text("status = 'parked'")),
    )


class BillingOperation(Base):
    """One billing change a user asked for (subscribe, change plan, cancel, buy a pack).

    Written before the payment provider is called and finished after, in separate
    transactions; its id (or the client's Idempotency-Key) makes the provider's
    idempotency keys, so a re-run after a crash maps to the same provider objects.
    At most one is pending per user: the next waits, or takes over a stale one.
    """

    __tablename__ = "billing_operations"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    params: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default="{}")
    request_key: Mapped[str | None] = mapped_column(String(64))  # sha256 of the Idempotency-Key
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    result: Mapped[dict | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'done', 'failed')", name="status"),
        Index("uq_billing_operations_pending_user", "user_id", unique=True,
              postgresql_where=text("status = 'pending'")),
    )
