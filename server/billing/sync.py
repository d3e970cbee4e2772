"""Provider facts -> our tables: subscription rows, plan and pack credits, and what the user
is told. The one path for Stripe webhooks and for the local gateway's immediate effects."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import User, UserSubscription
from db.models.billing import LIVE_SUBSCRIPTION_STATUSES
from server import activity
from server.adapters.billing.base import InvoiceFact, PackPayment, SubscriptionState
from server.billing.queries import SUBSCRIPTION_COLUMNS, billing_plan, subscription_and_plan
from server.credits import ledger
from server.realtime import outbox
from server.realtime.events import SubscriptionUpdated

log = logging.getLogger(__name__)

FINAL_STATUSES = ("canceled", "incomplete_expired")
# Invoices that pay for a period of a plan; proration-only invoices grant nothing.
GRANTING_REASONS = ("subscription_create", "subscription_cycle")

_ROW = (*SUBSCRIPTION_COLUMNS, UserSubscription.user_id, UserSubscription.stripe_customer_id,
        UserSubscription.ended_at, UserSubscription.last_event_at)
_TRACKED = ("status", "plan_id", "cancel_at_period_end", "current_period_start",
            "current_period_end", "canceled_at", "ended_at")


class Deferred(Exception):
    """The fact cannot be applied yet (unknown user, subscription or price): nothing written, parked."""


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NO_ROW: Any = _Marker("NO_ROW")  # `seen` for an answer about a subscription we had no row for
UNGUARDED: Any = _Marker("UNGUARDED")  # a fact of a provider with no webhooks (local billing)


@dataclass(frozen=True)
class Applied:
    row: dict[str, Any]
    changed: bool
    note: str


def event_time(seconds: int | float | None = None) -> datetime:
    """A provider event's time (whole seconds, like Stripe's `created`); now if not given."""
    if seconds is None:
        return datetime.now(UTC).replace(microsecond=0)
    return datetime.fromtimestamp(int(seconds), UTC)


async def lock_billing(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Serialise one user's billing changes until commit (API calls and webhooks alike)."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                          {"k": f"billing:{user_id}"})


async def subscription_row(
    session: AsyncSession, *, provider_id: str | None = None, id: uuid.UUID | None = None,
    lock: bool = False,
) -> dict[str, Any] | None:
    stmt = select(*_ROW).where(
        UserSubscription.stripe_subscription_id == provider_id if provider_id is not None
        else UserSubscription.id == id)
    if lock:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).mappings().one_or_none()
    return dict(row) if row else None


def public_subscription(row: dict[str, Any]) -> dict[str, Any]:
    return {col.key: row[col.key] for col in SUBSCRIPTION_COLUMNS}


async def resolve_user(
    session: AsyncSession, *, user_id: uuid.UUID | None, customer_id: str | None,
    subscription_id: str | None,
) -> uuid.UUID | None:
    """Whose fact this is: our row for the subscription, else its metadata, else the customer."""
    if subscription_id is not None:
        owner = (await session.execute(select(UserSubscription.user_id).where(
            UserSubscription.stripe_subscription_id == subscription_id))).scalar_one_or_none()
        if owner is not None:
            return owner
    if user_id is not None:
        found = (await session.execute(select(User.id).where(User.id == user_id))).scalar_one_or_none()
        if found is not None:
            return found
    if customer_id is not None:
        return (await session.execute(select(User.id).where(
            User.stripe_customer_id == customer_id))).scalar_one_or_none()
    return None


async def link_customer(session: AsyncSession, *, user_id: uuid.UUID, customer_id: str | None) -> bool:
    """Remember the user's provider customer if we have none yet (self-heals a lost write)."""
    if not customer_id:
        return False
    taken = select(User.id).where(User.stripe_customer_id == customer_id).exists()
    linked = await session.execute(update(User).where(
        User.id == user_id, User.stripe_customer_id.is_(None), ~taken,
    ).values(stripe_customer_id=customer_id))
    return linked.rowcount == 1


async def _plan_of(session: AsyncSession, state: SubscriptionState, fallback: str | None) -> dict | None:
    return (await billing_plan(session, price_id=state.price_id)
            or await billing_plan(session, plan_id=state.plan_id)
            or await billing_plan(session, plan_id=fallback))


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return max((x for x in (a, b) if x is not None), default=None)


# Facts arrive late, twice or out of order (webhooks race the API response and each other),
# so a row only moves forward: ordered by Stripe's `created` only (never our clock), an answer
# to our own call loses to any webhook applied since the call began, periods never move back
# (`_later`), canceled is final, and nothing returns to incomplete.
def _skip_reason(existing: dict[str, Any], state: SubscriptionState, event_at: datetime | None,
                 seen: Any) -> str | None:
    if existing["status"] in FINAL_STATUSES:
        return f"subscription already {existing['status']}"
    if event_at is not None and existing["last_event_at"] is not None and event_at < existing["last_event_at"]:
        return "older than the state already applied"
    if event_at is None and seen is not UNGUARDED and (seen is NO_ROW or existing["last_event_at"] != seen):
        # A webhook moved the row while our call ran: its state is ordered by Stripe, ours is not.
        return "a newer webhook was applied while the call ran"
    if state.status == "incomplete" and existing["status"] != "incomplete":
        return "a subscription never returns to incomplete"
    return None


async def _make_room(session: AsyncSession, *, user_id: uuid.UUID, provider_id: str) -> bool:
    """Before another subscription goes live: an abandoned incomplete one expires; a paid one
    blocks (two paid subscriptions need a person, not a guess)."""
    others = (await session.execute(select(UserSubscription.id, UserSubscription.status).where(
        UserSubscription.user_id == user_id,
        UserSubscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
        UserSubscription.stripe_subscription_id.is_distinct_from(provider_id),
    ))).all()
    if any(other.status != "incomplete" for other in others):
        return False
    for other in others:
        await session.execute(update(UserSubscription).where(UserSubscription.id == other.id)
                              .values(status="incomplete_expired", ended_at=event_time()))
    return True


async def apply_subscription(
    session: AsyncSession, *, state: SubscriptionState, event_at: datetime | None,
    user_id: uuid.UUID | None = None, seen: Any = UNGUARDED,
) -> Applied:
    """Bring our row for this provider subscription up to `state`.

    `event_at` is the Stripe event's `created`; None for the answer to our own call, with
    `seen` the row's last_event_at when the call began (NO_ROW if there was none).
    Raises Deferred when the subscription's user or price is unknown here."""
    user_id = await resolve_user(session, user_id=user_id or state.user_id,
                                 customer_id=state.customer_id, subscription_id=state.provider_id)
    if user_id is None:
        raise Deferred(f"subscription {state.provider_id} belongs to no known user")
    await lock_billing(session, user_id)
    existing = await subscription_row(session, provider_id=state.provider_id, lock=True)
    plan = await _plan_of(session, state, existing["plan_id"] if existing else None)
    if plan is None:
        raise Deferred(f"subscription {state.provider_id} has an unknown price {state.price_id}")
    await link_customer(session, user_id=user_id, customer_id=state.customer_id)
    values = {
        "status": state.status, "plan_id": plan["id"],
        "cancel_at_period_end": state.cancel_at_period_end,
        "current_period_start": state.current_period_start,
        "current_period_end": state.current_period_end,
        "canceled_at": state.canceled_at, "ended_at": state.ended_at,
    }
    live = state.status in LIVE_SUBSCRIPTION_STATUSES
    if existing is None:
        if live and not await _make_room(session, user_id=user_id, provider_id=state.provider_id):
            log.error("user %s already has a paid subscription; %s not recorded", user_id,
                      state.provider_id)
            raise Deferred(f"user {user_id} already has a paid subscription")
        new_id = (await session.execute(insert(UserSubscription).values(
            user_id=user_id, stripe_subscription_id=state.provider_id,
            stripe_customer_id=state.customer_id, last_event_at=event_at, **values,
        ).returning(UserSubscription.id))).scalar_one()
        row = await subscription_row(session, id=new_id)
        assert row is not None
        await _announce_change(session, before=None, after=row, plan=plan)
        return Applied(row, True, "created")
    skip = _skip_reason(existing, state, event_at, seen)
    if skip is not None:
        return Applied(existing, False, f"skipped: {skip}")
    values["current_period_start"] = _later(existing["current_period_start"], state.current_period_start)
    values["current_period_end"] = _later(existing["current_period_end"], state.current_period_end)
    values["ended_at"] = existing["ended_at"] or state.ended_at
    changed = any(values[k] != existing[k] for k in _TRACKED)
    if (changed and live and existing["status"] not in LIVE_SUBSCRIPTION_STATUSES
            and not await _make_room(session, user_id=user_id, provider_id=state.provider_id)):
        return Applied(existing, False, "skipped: another paid subscription is live")
    await session.execute(update(UserSubscription).where(UserSubscription.id == existing["id"]).values(
        last_event_at=_later(existing["last_event_at"], event_at),  # Stripe's `created` only
        stripe_customer_id=existing["stripe_customer_id"] or state.customer_id,
        **values,
    ))
    if not changed:
        return Applied(existing, False, "unchanged")
    row = await subscription_row(session, id=existing["id"])
    assert row is not None
    await _announce_change(session, before=existing, after=row, plan=plan)
    return Applied(row, True, "updated")


def _day(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d") if moment else "the end of the period"


def _describe(before: dict[str, Any] | None, after: dict[str, Any], plan_name: str) -> tuple[str, str]:
    status = after["status"]
    if status in FINAL_STATUSES and (before is None or before["status"] != status):
        return "subscription.canceled", f"Your {plan_name} subscription ended; you are on the Free plan"
    if before is None:
        if status == "incomplete":
            return "subscription.created", f"{plan_name} subscription started; waiting for the first payment"
        return "subscription.activated", f"You are now on the {plan_name} plan"
    if status != before["status"]:
        if status == "past_due":
            return "subscription.past_due", f"Payment for your {plan_name} subscription is past due"
        if status in ("active", "trialing"):
            return "subscription.activated", f"Your {plan_name} plan is active"
    if after["plan_id"] != before["plan_id"]:
        return "subscription.plan_changed", f"Plan changed to {plan_name}"
    if after["cancel_at_period_end"] and not before["cancel_at_period_end"]:
        return ("subscription.cancel_scheduled",
                f"Your {plan_name} subscription will end on {_day(after['current_period_end'])}")
    if before["cancel_at_period_end"] and not after["cancel_at_period_end"]:
        return "subscription.reactivated", f"Your {plan_name} subscription will renew"
    if after["current_period_end"] != before["current_period_end"]:
        return ("subscription.renewed",
                f"Your {plan_name} subscription renewed until {_day(after['current_period_end'])}")
    return "subscription.updated", f"Your {plan_name} subscription was updated"


async def announce(
    session: AsyncSession, *, row: dict[str, Any], type: str, message: str,
) -> None:
    """Tell the user: an activity row and a subscription.updated event with the plan now in force."""
    user_id = row["user_id"]
    _, plan_now = await subscription_and_plan(session, user_id=user_id)
    outbox.emit(session, user_id, SubscriptionUpdated(subscription=public_subscription(row), plan=plan_now))
    await activity.record(session, user_id=user_id, type=type, message=message, data={
        "subscription_id": str(row["id"]), "plan_id": row["plan_id"], "status": row["status"],
    })


async def _announce_change(
    session: AsyncSession, *, before: dict[str, Any] | None, after: dict[str, Any], plan: dict,
) -> None:
    type, message = _describe(before, after, plan["name"])
    await announce(session, row=after, type=type, message=message)


async def record_invoice_paid(session: AsyncSession, *, invoice: InvoiceFact) -> str:
    """Grant the plan's credits for a paid period invoice, once per invoice."""
    if invoice.billing_reason not in GRANTING_REASONS:
        return f"no grant for billing_reason {invoice.billing_reason}"
    user_id = await resolve_user(session, user_id=invoice.user_id, customer_id=invoice.customer_id,
                                 subscription_id=invoice.subscription_id)
    if user_id is None:
        raise Deferred(f"paid invoice {invoice.invoice_id} belongs to no known user")
    row = (await subscription_row(session, provider_id=invoice.subscription_id)
           if invoice.subscription_id else None)
    plan = (await billing_plan(session, price_id=invoice.price_id)
            or await billing_plan(session, plan_id=invoice.plan_id)
            or (await billing_plan(session, plan_id=row["plan_id"]) if row else None))
    if plan is None:
        raise Deferred(f"paid invoice {invoice.invoice_id} is for an unknown price {invoice.price_id}")
    if plan["credits_per_period"] <= 0:
        return "no grant: no paid plan on the invoice"
    entry = await ledger.grant(
        session, user_id=user_id, amount=plan["credits_per_period"],
        key=f"invoice:{invoice.invoice_id}:grant", reason=f"{plan['name']} plan credits",
        reference_id=invoice.invoice_id,
    )
    return f"granted {entry.amount}" if entry.created else "already granted"


async def record_invoice_failed(
    session: AsyncSession, *, invoice: InvoiceFact, event_at: datetime,
) -> str:
    """A failed payment: an active subscription becomes past_due, and the user is told."""
    user_id = await resolve_user(session, user_id=invoice.user_id, customer_id=invoice.customer_id,
                                 subscription_id=invoice.subscription_id)
    if invoice.subscription_id is None:
        return "ignored: not a subscription invoice"
    if user_id is None:
        raise Deferred(f"failed invoice {invoice.invoice_id} belongs to no known user")
    await lock_billing(session, user_id)
    row = await subscription_row(session, provider_id=invoice.subscription_id, lock=True)
    if row is None:
        raise Deferred(f"subscription {invoice.subscription_id} is not recorded yet")
    if row["status"] in ("active", "trialing") and (
            row["last_event_at"] is None or event_at >= row["last_event_at"]):
        await session.execute(update(UserSubscription).where(UserSubscription.id == row["id"])
                              .values(status="past_due", last_event_at=event_at))
        row = await subscription_row(session, id=row["id"])
        assert row is not None
    plan = await billing_plan(session, plan_id=row["plan_id"])
    await announce(session, row=row, type="billing.payment_failed", message=(
        f"Payment for your {plan['name'] if plan else ''} subscription failed; "
        "update your payment method to keep it"))
    return f"payment failed; subscription {row['status']}"


async def record_pack_paid(session: AsyncSession, *, payment: PackPayment) -> str:
    """Grant a credit pack once per payment."""
    if not payment.succeeded or payment.credits <= 0:
        return "no grant: payment not succeeded"
    user_id = await resolve_user(session, user_id=payment.user_id, customer_id=None,
                                 subscription_id=None)
    if user_id is None:
        raise Deferred(f"payment {payment.payment_id} belongs to no known user")
    entry = await ledger.grant(
        session, user_id=user_id, amount=payment.credits, type="purchase",
        key=f"payment_intent:{payment.payment_id}:grant",
        reason=f"Credit pack of {payment.credits} credits", reference_id=payment.payment_id,
    )
    return f"granted {entry.amount}" if entry.created else "already granted"
