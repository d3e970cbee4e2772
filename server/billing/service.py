"""Subscriptions and credit packs: each change a billing operation (operations.py) done
through the billing gateway and recorded through the sync path the webhooks use."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import User, UserSubscription
from db.session import transaction
from server.adapters.billing.base import (
    CreditPack,
    InvoiceFact,
    SubscriptionState,
)
from server.auth.current_user import CurrentUser
from server.billing import operations, sync
from server.billing.operations import Operation
from server.billing.queries import ENTITLED_STATUSES, billing_plan, get_plan, subscription_and_plan
from server.billing.sync import FINAL_STATUSES, NO_ROW, UNGUARDED, public_subscription
from server.config import Settings
from server.errors import Conflict, NotFound, ValidationFailed
from server.resources import Resources

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


def _pack(settings: Settings, pack_id: str) -> CreditPack:
    pack = next((p for p in credit_packs(settings) if p.id == pack_id), None)
    if pack is None:
        raise ValidationFailed("Unknown credit pack",
                               details=[{"field": "pack_id", "message": "unknown pack"}])
    return pack


def _subscription_uuid(subscription_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(subscription_id)
    except ValueError:
        raise NotFound("Subscription not found") from None


async def _owned(session: AsyncSession, *, user_id: uuid.UUID, subscription_id: str) -> dict[str, Any]:
    row = await sync.subscription_row(session, id=_subscription_uuid(subscription_id))
    if row is None or row["user_id"] != user_id:
        raise NotFound("Subscription not found")
    return row


async def _live_row(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any] | None:
    subscription, _ = await subscription_and_plan(session, user_id=user_id)
    if subscription is None:
        return None
    return await sync.subscription_row(session, id=subscription["id"])


async def _record(
    session: AsyncSession, *, user_id: uuid.UUID, state: SubscriptionState, seen: Any,
) -> dict[str, Any]:
    """The provider's answer to our call, unless a webhook has moved the row since (`seen`)."""
    try:
        applied = await sync.apply_subscription(session, state=state, event_at=None,
                                                user_id=user_id, seen=seen)
    except sync.Deferred as exc:
        log.error("subscription %s could not be recorded: %s", state.provider_id, exc)
        raise Conflict("The subscription could not be recorded; contact support") from exc
    return applied.row


async def _grant(session: AsyncSession, invoice: InvoiceFact) -> None:
    try:
        await sync.record_invoice_paid(session, invoice=invoice)
    except sync.Deferred as exc:  # its invoice.paid webhook grants it once it can
        log.warning("invoice %s not granted yet: %s", invoice.invoice_id, exc)


async def _answer(session: AsyncSession, *, user_id: uuid.UUID, row: dict[str, Any]) -> dict[str, Any]:
    _, plan = await subscription_and_plan(session, user_id=user_id)
    return {"subscription": public_subscription(row), "plan": plan}


async def _customer(res: Resources, op: Operation) -> str | None:
    """The user's provider customer, made once and stored at once (its own transaction)."""
    async with transaction(res.sessionmaker) as session:
        user = (await session.execute(select(User.email, User.stripe_customer_id)
                                      .where(User.id == op.user_id))).one()
    if user.stripe_customer_id:
        return user.stripe_customer_id
    created = await res.billing.create_customer(user_id=op.user_id, email=user.email,
                                                key=op.key("customer"))
    if created is None:
        return None
    async with transaction(res.sessionmaker) as session:
        await sync.link_customer(session, user_id=op.user_id, customer_id=created)
        stored = (await session.execute(select(User.stripe_customer_id)
                                        .where(User.id == op.user_id))).scalar_one()
    return stored or created


# -- what the API asks for --------------------------------------------------------------------

async def subscribe(
    res: Resources, *, user: CurrentUser, plan_id: str, idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Start a paid plan: the client confirms the first payment with client_secret (Stripe),
    or it is active at once (local billing). An abandoned unpaid attempt is replaced."""
    user.require_verified()
    async with transaction(res.sessionmaker) as session:
        await _paid_plan(session, plan_id)  # refused before anything is recorded
    return await operations.run(res, user_id=user.id, kind="subscribe", params={"plan_id": plan_id},
                                idempotency_key=idempotency_key, runners=RUNNERS)


async def change_plan(
    res: Resources, *, user: CurrentUser, subscription_id: str, plan_id: str,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Move a running subscription to another paid plan, prorated by the provider."""
    user.require_verified()
    async with transaction(res.sessionmaker) as session:
        await _paid_plan(session, plan_id)
        await _owned(session, user_id=user.id, subscription_id=subscription_id)
    return await operations.run(res, user_id=user.id, kind="change_plan",
                                params={"subscription_id": subscription_id, "plan_id": plan_id},
                                idempotency_key=idempotency_key, runners=RUNNERS)


async def cancel(
    res: Resources, *, user_id: uuid.UUID, subscription_id: str, idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Cancel at the end of the paid period (an unpaid one ends now)."""
    async with transaction(res.sessionmaker) as session:
        await _owned(session, user_id=user_id, subscription_id=subscription_id)
    return await operations.run(res, user_id=user_id, kind="cancel",
                                params={"subscription_id": subscription_id},
                                idempotency_key=idempotency_key, runners=RUNNERS)


async def reactivate(
    res: Resources, *, user_id: uuid.UUID, subscription_id: str, idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Undo a scheduled cancellation before the period ends."""
    async with transaction(res.sessionmaker) as session:
        await _owned(session, user_id=user_id, subscription_id=subscription_id)
    return await operations.run(res, user_id=user_id, kind="reactivate",
                                params={"subscription_id": subscription_id},
                                idempotency_key=idempotency_key, runners=RUNNERS)


async def buy_pack(
    res: Resources, *, user: CurrentUser, pack_id: str, idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Start paying for a credit pack; credits arrive when the payment succeeds."""
    user.require_verified()
    _pack(res.settings, pack_id)
    return await operations.run(res, user_id=user.id, kind="buy_pack", params={"pack_id": pack_id},
                                idempotency_key=idempotency_key, runners=RUNNERS)


# -- the operations themselves (each run again, with the same keys, if its process died) ------

async def _run_subscribe(res: Resources, op: Operation) -> dict[str, Any]:
    async with transaction(res.sessionmaker) as session:
        plan = await _paid_plan(session, op.params["plan_id"])
        live = await _live_row(session, user_id=op.user_id)
    if live is not None and live["status"] != "incomplete":
        raise Conflict("You already have a subscription; change its plan instead")
    customer_id = await _customer(res, op)
    started = await res.billing.start_subscription(user_id=op.user_id, customer_id=customer_id,
                                                   plan=plan, key=op.key("create"))
    canceled = None
    if live is not None and live["stripe_subscription_id"] != started.state.provider_id:
        canceled = await res.billing.cancel_now(
            subscription=live, key=op.key(f"cancel:{live['stripe_subscription_id']}"))
    async with transaction(res.sessionmaker) as session:
        if canceled is not None:
            await _record(session, user_id=op.user_id, state=canceled, seen=live["last_event_at"])
        row = await _record(session, user_id=op.user_id, state=started.state, seen=NO_ROW)
        if started.paid_invoice is not None:
            await _grant(session, started.paid_invoice)
        await operations.complete(session, op, result={"subscription": started.state.provider_id})
        answer = await _answer(session, user_id=op.user_id, row=row)
    return {**answer, "client_secret": started.client_secret}


async def _run_change_plan(res: Resources, op: Operation) -> dict[str, Any]:
    async with transaction(res.sessionmaker) as session:
        plan = await _paid_plan(session, op.params["plan_id"])
        row = await _owned(session, user_id=op.user_id, subscription_id=op.params["subscription_id"])
        if row["status"] not in ENTITLED_STATUSES:
            raise Conflict(f"A {row['status']} subscription cannot change plan")
        current_plan = await get_plan(session, row["plan_id"])
        if row["plan_id"] == plan["id"]:
            await operations.complete(session, op, result={"unchanged": True})
            return await _answer(session, user_id=op.user_id, row=row)
    upgrade = current_plan is None or plan["price_cents"] > current_plan["price_cents"]
    state = await res.billing.change_plan(subscription=row, plan=plan, upgrade=upgrade,
                                          key=op.key("update"))
    async with transaction(res.sessionmaker) as session:
        row = await _record(session, user_id=op.user_id, state=state, seen=row["last_event_at"])
        await operations.complete(session, op, result={"plan_id": plan["id"]})
        return await _answer(session, user_id=op.user_id, row=row)


async def _run_set_cancel(res: Resources, op: Operation) -> dict[str, Any]:
    cancel = op.kind == "cancel"
    async with transaction(res.sessionmaker) as session:
        row = await _owned(session, user_id=op.user_id, subscription_id=op.params["subscription_id"])
        if cancel and row["status"] in FINAL_STATUSES:
            raise Conflict("The subscription has already ended")
        if not cancel and row["status"] not in ENTITLED_STATUSES:
            raise Conflict("Only a running subscription can be reactivated; subscribe again instead")
        if row["status"] != "incomplete" and row["cancel_at_period_end"] == cancel:
            await operations.complete(session, op, result={"unchanged": True})
            return await _answer(session, user_id=op.user_id, row=row)
    if cancel and row["status"] == "incomplete":  # nothing paid yet: it simply ends
        state = await res.billing.cancel_now(subscription=row, key=op.key("cancel"))
    else:
        state = await res.billing.set_cancel_at_period_end(subscription=row, cancel=cancel,
                                                           key=op.key("update"))
    async with transaction(res.sessionmaker) as session:
        row = await _record(session, user_id=op.user_id, state=state, seen=row["last_event_at"])
        await operations.complete(session, op, result={"cancel_at_period_end": cancel})
        return await _answer(session, user_id=op.user_id, row=row)


async def _run_buy_pack(res: Resources, op: Operation) -> dict[str, Any]:
    pack = _pack(res.settings, op.params["pack_id"])
    customer_id = await _customer(res, op)
    payment = await res.billing.start_pack_payment(user_id=op.user_id, customer_id=customer_id,
                                                   pack=pack, key=op.key("payment"))
    async with transaction(res.sessionmaker) as session:
        if payment.succeeded:
            await sync.record_pack_paid(session, payment=payment)
        await operations.complete(session, op, result={"payment": payment.payment_id})
    return {
        "client_secret": payment.client_secret, "payment_intent_id": payment.payment_id,
        "amount_cents": payment.amount_cents, "credits": payment.credits,
        "currency": pack.currency, "pack_id": pack.id,
        "status": "succeeded" if payment.succeeded else "requires_payment",
    }


RUNNERS: dict[str, operations.Runner] = {
    "subscribe": _run_subscribe,
    "change_plan": _run_change_plan,
    "cancel": _run_set_cancel,
    "reactivate": _run_set_cancel,
    "buy_pack": _run_buy_pack,
}


async def finish_stale_operations(res: Resources) -> int:
    """Run again the billing changes whose process died (worker sweep)."""
    return await operations.finish_stale(res, RUNNERS)


# -- periods that end without a provider saying so (local billing) ---------------------------

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
    res: Resources, *, subscription_id: uuid.UUID, user_id: uuid.UUID, now: datetime,
) -> bool:
    """Renew or end one subscription whose period ran out, if the provider leaves that to us."""
    async with transaction(res.sessionmaker) as session:
        row = await sync.subscription_row(session, id=subscription_id)
    if (row is None or row["status"] not in ENTITLED_STATUSES or row["current_period_end"] is None
            or row["current_period_end"] > now):
        return False
    outcome = await res.billing.period_ended(subscription=row)  # outside any transaction
    if outcome is None:
        return False
    async with transaction(res.sessionmaker) as session:
        await sync.lock_billing(session, user_id)
        again = await sync.subscription_row(session, id=subscription_id, lock=True)
        if again is None or (again["status"], again["current_period_end"]) != (
                row["status"], row["current_period_end"]):
            return False  # someone else moved it meanwhile
        await _record(session, user_id=user_id, state=outcome.state, seen=UNGUARDED)
        if outcome.paid_invoice is not None:
            await _grant(session, outcome.paid_invoice)
    return True
