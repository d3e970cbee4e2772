"""Content request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.schemas import Input, PageQuery

Quality = Literal["standard", "hd", "premium"]
AspectRatio = Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"]
ContentType = Literal["image", "video"]
ContentStatus = Literal["queued", "processing", "completed", "failed", "canceled"]


class GenerateImageIn(Input):
    prompt: str = Field(min_length=1, max_length=2000)
    avatar_id: uuid.UUID | None = None
    quality: Quality = "standard"
    aspect_ratio: AspectRatio = "1:1"


class GenerateVideoIn(Input):
    prompt: str = Field(min_length=1, max_length=2000)
    avatar_id: uuid.UUID | None = None
    quality: Quality = "standard"
    duration_seconds: int = Field(6, ge=1, le=15, strict=True)  # not "6", not true
    aspect_ratio: AspectRatio = "16:9"
    source_content_id: uuid.UUID | None = None


class ContentListQuery(PageQuery):
    type: ContentType | None = None
    status: ContentStatus | None = None
    avatar_id: uuid.UUID | None = None


class ContentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    avatar_id: uuid.UUID | None
    type: ContentType
    status: ContentStatus
    progress: int
    stage: str | None
    prompt: str
    enhanced_prompt: str | None
    quality: Quality
    params: dict[str, Any]
    credits_cost: int
    url: str | None
    thumbnail_url: str | None
    error: str | None
    error_code: str | None = None  # a stable name for the failure, e.g. content_moderated
    attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class ContentPage(BaseModel):
    items: list[ContentOut]
    total: int
    page: int
    limit: int


class ContentStats(BaseModel):
    total: int
    by_type: dict[str, int]
    by_status: dict[str, int]
    credits_spent: int
