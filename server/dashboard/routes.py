"""HTTP routes of /api/dashboard."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server import keys
from server.auth.current_user import CurrentUser
from server.dashboard import service
from server.dashboard.schemas import (
    ActivityPage,
    ActivityQuery,
    AnalyticsOut,
    AnalyticsQuery,
    DashboardOut,
    LimitsOut,
    QuickStatsOut,
)
from server.routing import Routes

routes = Routes(tags=("dashboard",))


@routes.get("/api/dashboard", response=DashboardOut)
async def dashboard(request: web.Request, session: AsyncSession, user: CurrentUser) -> dict:
    """Everything the studio's home screen needs, in one call."""
    return await service.overview(session, user_id=user.id, storage=request.app[keys.resources].storage)


@routes.get("/api/dashboard/quick-stats", response=QuickStatsOut)
async def quick_stats(session: AsyncSession, user: CurrentUser) -> dict:
    """The small counters of a header bar (one query)."""
    return await service.quick_stats(session, user_id=user.id)


@routes.get("/api/dashboard/analytics", query=AnalyticsQuery, response=AnalyticsOut)
async def analytics(session: AsyncSession, user: CurrentUser, query: AnalyticsQuery) -> dict:
    """Usage per day over 7d, 30d or 90d (?tz= for day buckets)."""
    return await service.analytics(session, user_id=user.id, timeframe=query.timeframe, tz=query.tz)


@routes.get("/api/dashboard/activity", query=ActivityQuery, response=ActivityPage)
async def activity(session: AsyncSession, user: CurrentUser, query: ActivityQuery) -> dict:
    """The activity feed, newest first."""
    return await service.activity_page(session, user_id=user.id, page=query.page, limit=query.limit)


@routes.get("/api/dashboard/limits", response=LimitsOut)
async def limits(session: AsyncSession, user: CurrentUser) -> dict:
    """Plan limits, usage and warnings."""
    return await service.limits(session, user_id=user.id, verified=user.email_verified)
