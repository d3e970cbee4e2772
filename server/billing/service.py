"""Subscriptions and credit packs: what the API asks for, done through the billing gateway
and recorded through the same sync path the webhooks use."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import User, UserSubscription
from server.adapters.billing.base import BillingError, BillingGateway, CreditPack, SubscriptionState
from server.billing import sync
from server.billing.queries import ENTITLED_STATUSES, billing_plan, get_plan, subscription_and_plan
from server.billing.sync import FINAL_STATUSES, public_subscription
from server.config import Settings
from server.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed

log = logging.getLogger(__name__)


def credit_packs(settings: Settings) -> list[CreditPack]:
    """The packs on sale, from CREDIT_PACKS."""
    packs = []
    for item in settings.credit_packs:
        pack_id, credits, price = item.split(":")
        packs.append(CreditPack(id=pack_id, credits=int(credits), price_cents=int(price)))
    return packs


def pack_out(pack: CreditPack) -> dict[str, Any]:
    return {"id": pack.id, "credits": pack.credits, "price_cents": pack.price_cents,
            "currency": pack.currency}


async def _provider(call):
    try:
        return await call
    except BillingError as exc:
        log.warning("payment provider call failed: %s", exc.message)  # details for operators only
        raise ServiceUnavailable("The payment provider could not complete this; try again shortly") from exc


async def current(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    """The user's live subscription (or null) and the plan whose limits apply now."""
    subscription, plan = await subscription_and_plan(session, user_id=user_id)
    return {"subscription": subscription, "plan": plan}


async def _paid_plan(session: AsyncSession, plan_id: str) -> dict[str, Any]:
    plan = await billing_plan(session, plan_id=plan_id)
    if plan is None or not plan["is_active"]:
        raise ValidationFailed("Unknown plan", details=[{"field": "plan_id", "message": "unknown plan"}])
    if plan["price_cents"] <= 0 or not plan["stripe_price_id"]:
        raise ValidationFailed(
            "The free plan needs no subscription; cancel the paid one instead",
            details=[{"field": "plan_id", "message": "not a paid plan"}])
    return plan


async def _customer(
    session: AsyncSession, *, user_id: uuid.UUID, billing: BillingGateway,
) -> str | None:
    """The user's provider customer, created once (the caller holds the billing lock)."""
    user = (await session.execute(select(User.email, User.stripe_customer_id).where(User.id == user_id))).one()
    if user.stripe_customer_id:
        return user.stripe_customer_id
    customer_id = await _provider(billing.create_customer(user_id=user_id, email=user.email))
    if customer_id:
        await session.execute(update(User).where(User.id == user_id).values(stripe_customer_id=customer_id))
    return customer_id


async def _live_row(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any] | None:
    subscription, _ = await subscription_and_plan(session, user_id=user_id)
    if subscription is None:
        return None
    return await sync.subscription_row(session, id=subscription["id"], lock=True)


async def _record(
    session: AsyncSession, *, user_id: uuid.UUID, state: SubscriptionState,
) -> dict[str, Any]:
    applied = await sync.apply_subscription(session, state=state, event_at=sync.event_time(),
                                            user_id=user_id)
    if applied is None:
        raise Conflict("The subscription could not be recorded; contact support")
    return applied.row


async def _answer(session: AsyncSession, *, user_id: uuid.UUID, row: dict[str, Any]) -> dict[str, Any]:
    _, plan = await subscription_and_plan(session, user_id=user_id)
    return {"subscription": public_subscription(row), "plan": plan}


async def subscribe(
    session: AsyncSession, *, user_id: uuid.UUID, plan_id: str, billing: BillingGateway,
) -> dict[str, Any]:
    """Start a paid plan: the client confirms the first payment with client_secret (Stripe),
    or it is active at once (local billing). An abandoned unpaid attempt is replaced."""
    plan = await _paid_plan(session, plan_id)
    await sync.lock_billing(session, user_id)
    live = await _live_row(session, user_id=user_id)
    if live is not None:
        if live["status"] != "incomplete":
            raise Conflict("You already have a subscription; change its plan instead")
        await _record(session, user_id=user_id,
                      state=await _provider(billing.cancel_now(subscription=live)))
    customer_id = await _customer(session, user_id=user_id, billing=billing)
    started = await _provider(billing.start_subscription(user_id=user_id, customer_id=customer_id,
                                                         plan=plan))
    row = await _record(session, user_id=user_id, state=started.state)
    if started.paid_invoice is not None:
        await sync.record_invoice_paid(session, invoice=started.paid_invoice)
    return {**await _answer(session, user_id=user_id, row=row), "client_secret": started.client_secret}


async def _owned(session: AsyncSession, *, user_id: uuid.UUID, subscription_id: str) -> dict[str, Any]:
    try:
        sid = uuid.UUID(subscription_id)
    except ValueError:
        raise NotFound("Subscription not found") from None
    await sync.lock_billing(session, user_id)
    row = await sync.subscription_row(session, id=sid, lock=True)
    if row is None or row["user_id"] != user_id:
        raise NotFound("Subscription not found")
    return row


async def change_plan(
    session: AsyncSession, *, user_id: uuid.UUID, subscription_id: str, plan_id: str,
    billing: BillingGateway,
) -> dict[str, Any]:
    """Move a running subscription to another paid plan, prorated by the provider."""
    plan = await _paid_plan(session, plan_id)
    row = await _owned(session, user_id=user_id, subscription_id=subscription_id)
    if row["status"] not in ENTITLED_STATUSES:
        raise Conflict(f"A {row['status']} subscription cannot change plan")
    if row["plan_id"] != plan["id"]:
        current = await get_plan(session, row["plan_id"])
        upgrade = current is None or plan["price_cents"] > current["price_cents"]
        state = await _provider(billing.change_plan(subscription=row, plan=plan, upgrade=upgrade))
        row = await _record(session, user_id=user_id, state=state)
    return await _answer(session, user_id=user_id, row=row)


async def cancel(
    session: AsyncSession, *, user_id: uuid.UUID, subscription_id: str, billing: BillingGateway,
) -> dict[str, Any]:
    """Cancel at the end of the paid period (an unpaid one ends now)."""
    row = await _owned(session, user_id=user_id, subscription_id=subscription_id)
    if row["status"] in FINAL_STATUSES:
        raise Conflict("The subscription has already ended")
    if row["status"] == "incomplete":
        row = await _record(session, user_id=user_id,
                            state=await _provider(billing.cancel_now(subscription=row)))
    elif not row["cancel_at_period_end"]:
        row = await _record(session, user_id=user_id, state=await _provider(
            billing.set_cancel_at_period_end(subscription=row, cancel=True)))
    return await _answer(session, user_id=user_id, row=row)


async def reactivate(
    session: AsyncSession, *, user_id: uuid.UUID, subscription_id: str, billing: BillingGateway,
) -> dict[str, Any]:
    """Undo a scheduled cancellation before the period ends."""
    row = await _owned(session, user_id=user_id, subscription_id=subscription_id)
    if row["status"] not in ENTITLED_STATUSES:
        raise Conflict("Only a running subscription can be reactivated; subscribe again instead")
    if row["cancel_at_period_end"]:
        row = await _record(session, user_id=user_id, state=await _provider(
            billing.set_cancel_at_period_end(subscription=row, cancel=False)))
    return await _answer(session, user_id=user_id, row=row)


async def buy_pack(
    session: AsyncSession, *, user_id: uuid.UUID, pack_id: str, billing: BillingGateway,
    settings: Settings,
) -> dict[str, Any]:
    """Start paying for a credit pack; credits arrive when the payment succeeds."""
    pack = next((p for p in credit_packs(settings) if p.id == pack_id), None)
    if pack is None:
        raise ValidationFailed("Unknown credit pack",
                               details=[{"field": "pack_id", "message": "unknown pack"}])
    await sync.lock_billing(session, user_id)
    customer_id = await _customer(session, user_id=user_id, billing=billing)
    payment = await _provider(billing.start_pack_payment(user_id=user_id, customer_id=customer_id,
                                                         pack=pack))
    if payment.succeeded:
        await sync.record_pack_paid(session, payment=payment)
    return {
        "client_secret": payment.client_secret, "payment_intent_id": payment.payment_id,
        "amount_cents": payment.amount_cents, "credits": payment.credits,
        "currency": pack.currency, "pack_id": pack.id,
        "status": "succeeded" if payment.succeeded else "requires_payment",
    }


async def due_subscriptions(
    session: AsyncSession, *, now: datetime, limit: int = 200,
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(subscription id, user id) of running subscriptions whose period has run out."""
    rows = await session.execute(
        select(UserSubscription.id, UserSubscription.user_id).where(
            UserSubscription.status.in_(ENTITLED_STATUSES),
            UserSubscription.current_period_end <= now,
        ).order_by(UserSubscription.current_period_end).limit(limit))
    return [(r.id, r.user_id) for r in rows]


async def roll_over(
    session: AsyncSession, *, subscription_id: uuid.UUID, user_id: uuid.UUID,
    billing: BillingGateway, now: datetime,
) -> bool:
    """Renew or end one subscription whose period ran out, if the provider leaves that to us."""
    await sync.lock_billing(session, user_id)
    row = await sync.subscription_row(session, id=subscription_id, lock=True)
    if (row is None or row["status"] not in ENTITLED_STATUSES or row["current_period_end"] is None
            or row["current_period_end"] > now):
        return False  # someone else moved it meanwhile
    outcome = await _provider(billing.period_ended(subscription=row))
    if outcome is None:
        return False
    await _record(session, user_id=user_id, state=outcome.state)
    if outcome.paid_invoice is not None:
        await sync.record_invoice_paid(session, invoice=outcome.paid_invoice)
    return True
