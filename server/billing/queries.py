"""Read side of billing: plans and a user's current subscription."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import SubscriptionPlan, UserSubscription
from db.models.billing import LIVE_SUBSCRIPTION_STATUSES
from server.billing.plans import FREE_PLAN_ID

PLAN_COLUMNS = (
    SubscriptionPlan.id, SubscriptionPlan.name, SubscriptionPlan.price_cents,
    SubscriptionPlan.currency, SubscriptionPlan.interval, SubscriptionPlan.credits_per_period,
    SubscriptionPlan.avatar_limit, SubscriptionPlan.features,
)
SUBSCRIPTION_COLUMNS = (
    UserSubscription.id, UserSubscription.plan_id, UserSubscription.status,
    UserSubscription.cancel_at_period_end, UserSubscription.current_period_start,
    UserSubscription.current_period_end, UserSubscription.created_at,
    UserSubscription.canceled_at, UserSubscription.stripe_subscription_id,
)
# Statuses in which the plan's benefits apply.
ENTITLED_STATUSES = ("trialing", "active", "past_due")


async def list_plans(session: AsyncSession) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(*PLAN_COLUMNS).where(SubscriptionPlan.is_active).order_by(SubscriptionPlan.sort_order)
    )
    return [dict(r) for r in rows.mappings()]


async def get_plan(session: AsyncSession, plan_id: str) -> dict[str, Any] | None:
    row = (await session.execute(select(*PLAN_COLUMNS).where(SubscriptionPlan.id == plan_id))).mappings().one_or_none()
    return dict(row) if row else None


async def current_subscription(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any] | None:
    """The user's live subscription (incomplete, trialing, active or past_due), if any."""
    row = (
        await session.execute(
            select(*SUBSCRIPTION_COLUMNS)
            .where(UserSubscription.user_id == user_id,
                   UserSubscription.status.in_(LIVE_SUBSCRIPTION_STATUSES))
            .order_by(UserSubscription.created_at.desc())
            .limit(1)
        )
    ).mappings().one_or_none()
    return dict(row) if row else None


async def subscription_and_plan(
    session: AsyncSession, *, user_id: uuid.UUID
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(subscription or None, the plan whose limits apply now: free unless entitled)."""
    subscription = await current_subscription(session, user_id=user_id)
    plan_id = FREE_PLAN_ID
    if subscription is not None and subscription["status"] in ENTITLED_STATUSES:
        plan_id = subscription["plan_id"]
    plan = await get_plan(session, plan_id)
    if plan is None:
        raise RuntimeError(f"plan {plan_id!r} missing: run `lustify seed`")
    return subscription, plan


async def billing_plan(
    session: AsyncSession, *, plan_id: str | None = None, price_id: str | None = None
) -> dict[str, Any] | None:
    """A plan with its Stripe price id, found by id or by price."""
    if plan_id is None and price_id is None:
        return None
    where = SubscriptionPlan.id == plan_id if plan_id is not None else SubscriptionPlan.stripe_price_id == price_id
    row = (await session.execute(
        select(*PLAN_COLUMNS, SubscriptionPlan.stripe_price_id, SubscriptionPlan.is_active).where(where)
    )).mappings().first()
    return dict(row) if row else None


async def subscription_history(
    session: AsyncSession, *, user_id: uuid.UUID, page: int, limit: int
) -> dict[str, Any]:
    """Every subscription the user has had, newest first, one page of it."""
    where = UserSubscription.user_id == user_id
    total = (await session.execute(
        select(func.count()).select_from(UserSubscription).where(where))).scalar_one()
    rows = await session.execute(
        select(*SUBSCRIPTION_COLUMNS, UserSubscription.ended_at).where(where)
        .order_by(UserSubscription.created_at.desc(), UserSubscription.id.desc())
        .limit(limit).offset((page - 1) * limit)
    )
    return {"items": [dict(r) for r in rows.mappings()], "total": total, "page": page, "limit": limit}
