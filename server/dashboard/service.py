"""Dashboard reads, computed in SQL (Core selects over the list/analytics indexes)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import ActivityEvent, User
from db.models import GeneratedContent as C
from server.adapters.storage import Storage
from server.billing.plans import active_generation_limit
from server.billing.queries import subscription_and_plan
from server.content.queries import COLUMNS as CONTENT_COLUMNS
from server.content.queries import render
from server.credits.costs import cost_of
from server.credits.queries import get_credits
from server.errors import ValidationFailed

TIMEFRAME_DAYS = {"7d": 7, "30d": 30, "90d": 90}
USER_COLUMNS = (User.id, User.email, User.display_name, User.email_verified, User.created_at, User.timezone)
ACTIVITY_COLUMNS = (ActivityEvent.id, ActivityEvent.type, ActivityEvent.message, ActivityEvent.data,
                    ActivityEvent.created_at)

# Totals come from the trigger-kept rollups, never from scanning a user's content.
_COUNTS = text("""
SELECT
    (SELECT count(*) FROM avatars WHERE user_id = :user_id)::int AS avatars,
    coalesce(sum(images), 0)::int AS images,
    coalesce(sum(videos), 0)::int AS videos,
    (SELECT count(*) FROM generated_content
     WHERE user_id = :user_id AND status IN ('queued', 'processing'))::int AS in_progress,
    coalesce(sum(failed), 0)::int AS failed
FROM usage_buckets WHERE user_id = :user_id
""")

_QUICK = text("""
SELECT coalesce((SELECT balance FROM user_credits WHERE user_id = :user_id), 0) AS balance,
       (SELECT NOT email_verified FROM users WHERE id = :user_id) AS unverified,
       counts.*
FROM (""" + _COUNTS.text + """) AS counts
""")

# One row per day in the user's time zone, zeros for empty days; 15-minute buckets make
# every zone's day boundary exact.
_SERIES = text("""
WITH bounds AS (
    SELECT (now() AT TIME ZONE :tz)::date AS today
), days AS (
    SELECT generate_series(today - (:days - 1), today, interval '1 day')::date AS day FROM bounds
), usage AS (
    SELECT (bucket AT TIME ZONE :tz)::date AS day, sum(images) AS images, sum(videos) AS videos,
           sum(failed) AS failed, sum(credits_spent) AS credits_spent,
           sum(credits_refunded) AS credits_refunded
    FROM usage_buckets
    WHERE user_id = :user_id
      AND bucket >= ((SELECT today FROM bounds) - (:days - 1))::timestamp AT TIME ZONE :tz
    GROUP BY 1
)
SELECT days.day AS date,
       coalesce(usage.credits_spent, 0)::int AS credits_spent,
       coalesce(usage.images, 0)::int AS images,
       coalesce(usage.videos, 0)::int AS videos,
       coalesce(usage.failed, 0)::int AS failed,
       coalesce(usage.credits_refunded, 0)::int AS credits_refunded
FROM days LEFT JOIN usage ON usage.day = days.day
ORDER BY days.day
""")

_TOP_AVATARS = text("""
SELECT a.id AS avatar_id, a.name, sum(h.uses)::int AS uses
FROM avatar_usage_hours h JOIN avatars a ON a.id = h.avatar_id
WHERE h.user_id = :user_id
  AND h.hour >= (((now() AT TIME ZONE :tz)::date - (:days - 1))::timestamp AT TIME ZONE :tz)
GROUP BY a.id, a.name HAVING sum(h.uses) > 0
ORDER BY uses DESC, a.name LIMIT 5
""")


async def counts(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, int]:
    return dict((await session.execute(_COUNTS, {"user_id": user_id})).mappings().one())


async def quick_stats(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    """The header bar's counters, in one query."""
    row = dict((await session.execute(_QUICK, {"user_id": user_id})).mappings().one())
    row["unverified"] = bool(row["unverified"])
    row.pop("failed", None)
    return row


async def analytics(session: AsyncSession, *, user_id: uuid.UUID, timeframe: str, tz: str | None) -> dict[str, Any]:
    """Per-day usage over the timeframe in the user's time zone, totals and top avatars."""
    if tz is None:
        tz = (await session.execute(select(User.timezone).where(User.id == user_id))).scalar_one_or_none() or "UTC"
    params = {"user_id": user_id, "tz": tz, "days": TIMEFRAME_DAYS[timeframe]}
    try:
        series = [dict(r) for r in (await session.execute(_SERIES, params)).mappings()]
    except DBAPIError as exc:  # a zone Python knows but this PostgreSQL does not
        if "time zone" not in str(exc.orig):
            raise
        raise ValidationFailed(f"Unknown time zone {tz!r}",
                               details=[{"field": "tz", "message": "unknown time zone"}]) from exc
    totals = {key: sum(day[key] for day in series)
              for key in ("credits_spent", "images", "videos", "failed", "credits_refunded")}
    for day in series:
        del day["credits_refunded"]
    top = [dict(r) for r in (await session.execute(_TOP_AVATARS, params)).mappings()]
    return {"timeframe": timeframe, "timezone": tz, "series": series, "totals": totals, "top_avatars": top}


async def activity_page(session: AsyncSession, *, user_id: uuid.UUID, page: int, limit: int) -> dict[str, Any]:
    """The persisted feed, newest first."""
    total = (await session.execute(
        select(func.count()).select_from(ActivityEvent).where(ActivityEvent.user_id == user_id))).scalar_one()
    rows = await session.execute(
        select(*ACTIVITY_COLUMNS).where(ActivityEvent.user_id == user_id)
        .order_by(ActivityEvent.created_at.desc(), ActivityEvent.id.desc())
        .limit(limit).offset((page - 1) * limit)
    )
    return {"items": [dict(r) for r in rows.mappings()], "total": total, "page": page, "limit": limit}


def _warnings(*, verified: bool, balance: int, allowance: int, avatars: int, avatar_limit: int,
              subscription: dict[str, Any] | None) -> list[dict[str, str]]:
    warnings = []
    if not verified:
        warnings.append({"code": "email_unverified",
                         "message": "Verify your email address to create avatars and generate content"})
    if balance < max(2 * cost_of("image"), allowance // 10):
        warnings.append({"code": "low_credits",
                         "message": f"Only {balance} credits left; top up or upgrade your plan"})
    if avatar_limit and avatars >= avatar_limit - 1 and (avatars > 0 or avatar_limit == 1):
        left = max(0, avatar_limit - avatars)
        warnings.append({"code": "avatar_limit_near",
                         "message": f"{avatars} of {avatar_limit} avatars used"
                                    + ("; upgrade to create more" if left == 0 else f"; {left} left")})
    if subscription is not None and subscription["status"] in ("past_due", "unpaid"):
        warnings.append({"code": "payment_failed",
                         "message": "Your last payment failed; update your payment method to keep your plan"})
    return warnings


async def limits(session: AsyncSession, *, user_id: uuid.UUID, verified: bool) -> dict[str, Any]:
    """Avatars used/limit, generations in progress/cap, credits vs the plan's allowance, and warnings."""
    subscription, plan = await subscription_and_plan(session, user_id=user_id)
    credits = await get_credits(session, user_id=user_id)
    numbers = await counts(session, user_id=user_id)
    return _limits(verified=verified, subscription=subscription, plan=plan, credits=credits,
                   avatars_used=numbers["avatars"], active_generations=numbers["in_progress"])


def _limits(*, verified: bool, subscription: dict[str, Any] | None, plan: dict[str, Any],
            credits: dict[str, Any], avatars_used: int, active_generations: int) -> dict[str, Any]:
    limit = plan["avatar_limit"]
    allowance = plan["credits_per_period"]
    at_once = active_generation_limit(plan["id"])
    return {
        "plan_id": plan["id"],
        "avatars": {"used": avatars_used, "limit": limit, "remaining": max(0, limit - avatars_used)},
        # queued + processing, and the plan's cap on them (429 too_many_active_generations past it)
        "generations": {"active": active_generations, "limit": at_once,
                        "remaining": max(0, at_once - active_generations)},
        "credits": {"balance": credits["balance"], "plan_allowance": allowance,
                    "used_fraction": round(1 - credits["balance"] / allowance, 3) if allowance else None},
        "warnings": _warnings(verified=verified, balance=credits["balance"], allowance=allowance,
                              avatars=avatars_used, avatar_limit=limit, subscription=subscription),
    }


async def overview(session: AsyncSession, *, user_id: uuid.UUID, storage: Storage) -> dict[str, Any]:
    """Everything the studio's home screen shows, in one call."""
    user = dict((await session.execute(select(*USER_COLUMNS).where(User.id == user_id))).mappings().one())
    subscription, plan = await subscription_and_plan(session, user_id=user_id)
    numbers = await counts(session, user_id=user_id)
    recent = (await session.execute(
        select(*CONTENT_COLUMNS).where(C.user_id == user_id).order_by(C.created_at.desc(), C.id.desc()).limit(5)
    )).mappings().all()
    activity = (await session.execute(
        select(*ACTIVITY_COLUMNS).where(ActivityEvent.user_id == user_id)
        .order_by(ActivityEvent.created_at.desc(), ActivityEvent.id.desc()).limit(10)
    )).mappings().all()
    credits = await get_credits(session, user_id=user_id)
    return {
        "user": user,
        "credits": credits,
        "subscription": subscription,
        "plan": plan,
        "counts": numbers,
        "recent_content": [await render(row, storage) for row in recent],
        "recent_activity": [dict(row) for row in activity],
        "limits": _limits(verified=user["email_verified"], subscription=subscription, plan=plan,
                          credits=credits, avatars_used=numbers["avatars"],
                          active_generations=numbers["in_progress"]),
    }
