"""The plan catalogue (API.md) and its idempotent seed."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import SubscriptionPlan
from server.config import Settings

FREE_PLAN_ID = "free"
SIGNUP_CREDITS = 25
# Generations an account may have queued or processing at once (429 too_many_active_generations
# past it). Workers schedule users fairly, so a full queue of one account delays nobody else;
# the cap bounds what one account can hold in the queue and at the provider.
ACTIVE_GENERATION_LIMITS = {"free": 5, "starter": 10, "pro": 50, "enterprise": 200}


def active_generation_limit(plan_id: str) -> int:
    """The plan's cap on queued + processing generations (an unknown plan gets the free one's)."""
    return ACTIVE_GENERATION_LIMITS.get(plan_id, ACTIVE_GENERATION_LIMITS[FREE_PLAN_ID])


def _at_once(plan_id: str) -> str:
    return f"{ACTIVE_GENERATION_LIMITS[plan_id]} generations at once"


def plan_catalogue(settings: Settings) -> list[dict]:
    return [
        {"id": "free", "name": "Free", "price_cents": 0, "credits_per_period": SIGNUP_CREDITS,
         "avatar_limit": 1, "stripe_price_id": None, "sort_order": 0,
         "features": ["25 signup credits", "1 avatar", "Standard quality", _at_once("free")]},
        {"id": "starter", "name": "Starter", "price_cents": 999, "credits_per_period": 100,
         "avatar_limit": 3, "stripe_price_id": settings.stripe_price_starter, "sort_order": 1,
         "features": ["100 credits per month", "3 avatars", "HD quality", _at_once("starter")]},
        {"id": "pro", "name": "Pro", "price_cents": 2999, "credits_per_period": 500,
         "avatar_limit": 10, "stripe_price_id": settings.stripe_price_pro, "sort_order": 2,
         "features": ["500 credits per month", "10 avatars", "Premium quality", "Video generation",
                      _at_once("pro")]},
        {"id": "enterprise", "name": "Enterprise", "price_cents": 9999, "credits_per_period": 2000,
         "avatar_limit": 50, "stripe_price_id": settings.stripe_price_enterprise, "sort_order": 3,
         "features": ["2000 credits per month", "50 avatars", "Premium quality", "Priority queue",
                      _at_once("enterprise")]},
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
