"""The plan catalogue (API.md) and its idempotent seed."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import SubscriptionPlan
from server.config import Settings

FREE_PLAN_ID = "free"
SIGNUP_CREDITS = 25


def plan_catalogue(settings: Settings) -> list[dict]:
    return [
        {"id": "free", "name": "Free", "price_cents": 0, "credits_per_period": SIGNUP_CREDITS,
         "avatar_limit": 1, "stripe_price_id": None, "sort_order": 0,
         "features": ["25 signup credits", "1 avatar", "Standard quality"]},
        {"id": "starter", "name": "Starter", "price_cents": 999, "credits_per_period": 100,
         "avatar_limit": 3, "stripe_price_id": settings.stripe_price_starter, "sort_order": 1,
         "features": ["100 credits per month", "3 avatars", "HD quality"]},
        {"id": "pro", "name": "Pro", "price_cents": 2999, "credits_per_period": 500,
         "avatar_limit": 10, "stripe_price_id": settings.stripe_price_pro, "sort_order": 2,
         "features": ["500 credits per month", "10 avatars", "Premium quality", "Video generation"]},
        {"id": "enterprise", "name": "Enterprise", "price_cents": 9999, "credits_per_period": 2000,
         "avatar_limit": 50, "stripe_price_id": settings.stripe_price_enterprise, "sort_order": 3,
         "features": ["2000 credits per month", "50 avatars", "Premium quality", "Priority queue"]},
    ]


async def seed_plans(session: AsyncSession, *, settings: Settings) -> int:
    """Insert or update the four plans; running it again changes nothing else."""
    rows = [{**plan, "currency": "usd", "interval": "month"} for plan in plan_catalogue(settings)]
    stmt = insert(SubscriptionPlan).values(rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[SubscriptionPlan.id],
        set_={col: stmt.excluded[col] for col in rows[0] if col != "id"},
    )
    await session.execute(stmt)
    return len(rows)
