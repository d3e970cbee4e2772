"""Billing request and response bodies (API.md objects: plan, subscription)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import Field

from server.schemas import Input, Output, Page


class PlanOut(Output):
    id: str
    name: str
    price_cents: int
    currency: str
    interval: str
    credits_per_period: int
    avatar_limit: int
    features: list[Any]


class PlanList(Output):
    items: list[PlanOut]


class PackOut(Output):
    id: str
    credits: int
    price_cents: int
    currency: str


class PackList(Output):
    items: list[PackOut]


class SubscriptionOut(Output):
    id: uuid.UUID
    plan_id: str
    status: str
    cancel_at_period_end: bool
    current_period_start: datetime | None
    current_period_end: datetime | None
    created_at: datetime
    canceled_at: datetime | None = None
    ended_at: datetime | None = None


class CurrentOut(Output):
    subscription: SubscriptionOut | None
    plan: PlanOut


class CreatedOut(CurrentOut):
    client_secret: str | None


class SubscriptionPage(Page[SubscriptionOut]):
    pass


class PlanChoiceIn(Input):
    plan_id: str = Field(min_length=1, max_length=32)


class PackChoiceIn(Input):
    pack_id: str = Field(min_length=1, max_length=64)


class PaymentIntentOut(Output):
    client_secret: str | None
    payment_intent_id: str
    amount_cents: int
    credits: int
    currency: str
    pack_id: str
    status: str


class WebhookOut(Output):
    received: bool
    duplicate: bool
    result: str | None
    parked: bool = False  # cannot apply yet (unknown customer or price): retried later
