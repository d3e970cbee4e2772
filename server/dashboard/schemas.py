"""Dashboard query parameters and response shapes."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.schemas import PageQuery, known_time_zone


class AnalyticsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeframe: Literal["7d", "30d", "90d"] = "30d"
    tz: str | None = Field(None, max_length=64, description="IANA time zone for day buckets (default: the user's, else UTC)")

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return known_time_zone(value)


class DayRow(BaseModel):
    date: date
    credits_spent: int
    images: int
    videos: int
    failed: int


class TopAvatar(BaseModel):
    avatar_id: uuid.UUID
    name: str
    uses: int


class AnalyticsOut(BaseModel):
    timeframe: str
    timezone: str
    series: list[DayRow]
    totals: dict[str, int]
    top_avatars: list[TopAvatar]


class Warning(BaseModel):
    code: Literal["low_credits", "avatar_limit_near", "payment_failed", "email_unverified"]
    message: str


class LimitsOut(BaseModel):
    avatars: dict[str, Any]
    generations: dict[str, Any]  # {active, limit, remaining}: queued + processing vs the plan's cap
    credits: dict[str, Any]
    plan_id: str
    warnings: list[Warning]


class QuickStatsOut(BaseModel):
    balance: int
    avatars: int
    images: int
    videos: int
    in_progress: int
    unverified: bool


class ActivityOut(BaseModel):
    id: uuid.UUID
    type: str
    message: str
    data: dict[str, Any]
    created_at: datetime


class ActivityPage(BaseModel):
    items: list[ActivityOut]
    total: int
    page: int
    limit: int


class DashboardOut(BaseModel):
    user: dict[str, Any]
    credits: dict[str, Any]
    subscription: dict[str, Any] | None
    plan: dict[str, Any]
    counts: dict[str, int]
    recent_content: list[dict[str, Any]]
    recent_activity: list[ActivityOut]
    limits: LimitsOut


ActivityQuery = PageQuery
