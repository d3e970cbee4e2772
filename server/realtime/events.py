"""The server -> client events of API.md, one pydantic model each."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

from pydantic import BaseModel


class Event(BaseModel):
    name: ClassVar[str]


class GenerationProgress(Event):
    name: ClassVar[str] = "generation.progress"
    content_id: uuid.UUID
    status: str
    progress: int
    stage: str | None = None


class GenerationCompleted(Event):
    name: ClassVar[str] = "generation.completed"
    content: dict[str, Any]


class GenerationFailed(Event):
    name: ClassVar[str] = "generation.failed"
    content_id: uuid.UUID
    error: str
    refunded: int
    code: str = "generation_failed"  # e.g. content_moderated, provider_error, timed_out


class CreditsUpdated(Event):
    name: ClassVar[str] = "credits.updated"
    balance: int
    delta: int
    reason: str | None
    transaction_id: uuid.UUID


class AvatarUpdated(Event):
    name: ClassVar[str] = "avatar.updated"
    avatar: dict[str, Any]


class SubscriptionUpdated(Event):
    name: ClassVar[str] = "subscription.updated"
    subscription: dict[str, Any] | None
    plan: dict[str, Any] | None


class ActivityPosted(Event):
    name: ClassVar[str] = "activity"
    activity: dict[str, Any]


EVENT_TYPES: tuple[type[Event], ...] = (
    GenerationProgress, GenerationCompleted, GenerationFailed, CreditsUpdated, AvatarUpdated,
    SubscriptionUpdated, ActivityPosted,
)
