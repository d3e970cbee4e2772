"""Local billing (no STRIPE_SECRET_KEY): everything is paid and takes effect at once;
periods roll over when the worker's sweep finds them ended."""

from __future__ import annotations

import calendar
import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from server.adapters.billing.base import (
    CreditPack,
    InvoiceFact,
    PackPayment,
    PeriodEnd,
    StartedSubscription,
    SubscriptionState,
)


def one_month_after(moment: datetime) -> datetime:
    """Same day and time next month, clamped to the month's last day (Jan 31 -> Feb 28/29)."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _local_id(prefix: str, key: str) -> str:
    """Ids follow the idempotency key, so a repeated call names the same local object."""
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _state_of(subscription: dict[str, Any]) -> SubscriptionState:
    return SubscriptionState(
        provider_id=subscription["stripe_subscription_id"],
        status=subscription["status"],
        user_id=subscription["user_id"],
        plan_id=subscription["plan_id"],
        cancel_at_period_end=subscription["cancel_at_period_end"],
        current_period_start=subscription["current_period_start"],
        current_period_end=subscription["current_period_end"],
        canceled_at=subscription["canceled_at"],
        ended_at=subscription["ended_at"],
    )


class LocalBilling:
    """The facts Stripe's webhooks would report, so `lustify dev` runs the real internal paths."""

    name = "local"

    async def create_customer(self, *, user_id: uuid.UUID, email: str, key: str) -> str | None:
        return None

    async def start_subscription(
        self, *, user_id: uuid.UUID, customer_id: str | None, plan: dict[str, Any], key: str
    ) -> StartedSubscription:
        now = _now()
        subscription_id = _local_id("local_sub", key)
        state = SubscriptionState(
            provider_id=subscription_id, status="active", user_id=user_id, plan_id=plan["id"],
            price_id=plan.get("stripe_price_id"), current_period_start=now,
            current_period_end=one_month_after(now),
        )
        invoice = InvoiceFact(
            invoice_id=_local_id("local_in", key), subscription_id=subscription_id,
            billing_reason="subscription_create",
            user_id=user_id, plan_id=plan["id"], price_id=plan.get("stripe_price_id"),
        )
        return StartedSubscription(state=state, client_secret=None, paid_invoice=invoice)

    async def change_plan(self, *, subscription: dict[str, Any], plan: dict[str, Any],
                          upgrade: bool, key: str) -> SubscriptionState:
        return replace(_state_of(subscription), plan_id=plan["id"],
                       price_id=plan.get("stripe_price_id"))

    async def set_cancel_at_period_end(
        self, *, subscription: dict[str, Any], cancel: bool, key: str
    ) -> SubscriptionState:
        return replace(_state_of(subscription), cancel_at_period_end=cancel,
                       canceled_at=_now() if cancel else None)

    async def cancel_now(self, *, subscription: dict[str, Any], key: str) -> SubscriptionState:
        now = _now()
        return replace(_state_of(subscription), status="canceled", canceled_at=now, ended_at=now)

    async def start_pack_payment(
        self, *, user_id: uuid.UUID, customer_id: str | None, pack: CreditPack, key: str
    ) -> PackPayment:
        return PackPayment(
            payment_id=_local_id("local_pi", key), amount_cents=pack.price_cents,
            credits=pack.credits, pack_id=pack.id, user_id=user_id, client_secret=None,
            succeeded=True,
        )

    async def period_ended(self, *, subscription: dict[str, Any]) -> PeriodEnd | None:
        """Renewed and paid, or ended when it was set to cancel at the period's end."""
        state = _state_of(subscription)
        end = subscription["current_period_end"]
        if subscription["cancel_at_period_end"]:
            return PeriodEnd(replace(state, status="canceled", ended_at=end))
        renewed = replace(state, status="active", current_period_start=end,
                          current_period_end=one_month_after(end))
        invoice = InvoiceFact(
            # One invoice per period: rolling the same period over twice grants once.
            invoice_id=_local_id("local_in", f"{state.provider_id}:{end.isoformat()}"),
            subscription_id=state.provider_id,
            billing_reason="subscription_cycle", user_id=state.user_id, plan_id=state.plan_id,
        )
        return PeriodEnd(renewed, invoice)

    async def close(self) -> None:
        return None
