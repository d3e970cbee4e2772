"""Stripe webhooks: verify the signature over the raw body, apply each event id once.

The stripe_events insert is the lock: a concurrent copy of the same event waits on
its primary key and then finds it taken; if applying fails, the insert rolls back
with everything else and Stripe's retry applies it later. Applying touches only our
database (every fact is in the payload), so the answer stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import StripeEvent
from server.adapters.billing.stripe_objects import (
    checkout_pack_payment,
    invoice_fact,
    pack_payment,
    ref,
    subscription_state,
    user_id_of,
)
from server.billing import sync
from server.config import Settings
from server.errors import InvalidSignature, ValidationFailed

log = logging.getLogger(__name__)

Handler = Callable[[AsyncSession, Mapping[str, Any], Mapping[str, Any]], Awaitable[str]]


def verified_event(payload: bytes, signature: str | None, settings: Settings) -> dict[str, Any]:
    """The event, if `signature` is Stripe's for this exact body and recent enough."""
    secret = settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else None
    if not secret:
        raise InvalidSignature("Stripe webhooks are not configured here (STRIPE_WEBHOOK_SECRET)")
    import stripe  # ~30 MB and 0.3 s: loaded on first use, never under local billing

    try:
        stripe.WebhookSignature.verify_header(
            payload, signature, secret, tolerance=settings.stripe_webhook_tolerance_seconds)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as exc:
        raise InvalidSignature("The Stripe-Signature header does not match this payload") from exc
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed("The event is not JSON") from exc
    if not (isinstance(event, dict) and isinstance(event.get("id"), str) and event["id"]
            and isinstance(event.get("type"), str) and isinstance(event.get("created"), int)
            and isinstance((event.get("data") or {}).get("object"), dict)):
        raise ValidationFailed("The event lacks id, type, created or data.object")
    return event


async def _subscription(session: AsyncSession, event: Mapping, obj: Mapping) -> str:
    applied = await sync.apply_subscription(session, state=subscription_state(obj),
                                            event_at=sync.event_time(event["created"]))
    return f"subscription {applied.note}" if applied else "ignored: not our subscription"


async def _invoice_paid(session: AsyncSession, event: Mapping, obj: Mapping) -> str:
    return await sync.record_invoice_paid(session, invoice=invoice_fact(obj))


async def _invoice_failed(session: AsyncSession, event: Mapping, obj: Mapping) -> str:
    return await sync.record_invoice_failed(session, invoice=invoice_fact(obj),
                                            event_at=sync.event_time(event["created"]))


async def _payment_succeeded(session: AsyncSession, event: Mapping, obj: Mapping) -> str:
    payment = pack_payment(obj)
    if payment is None:
        return "ignored: not a credit pack payment"
    return await sync.record_pack_paid(session, payment=payment)


async def _checkout_completed(session: AsyncSession, event: Mapping, obj: Mapping) -> str:
    payment = checkout_pack_payment(obj)
    if payment is not None:
        return await sync.record_pack_paid(session, payment=payment)
    user_id = await sync.resolve_user(
        session, user_id=user_id_of(obj.get("metadata")) or user_id_of({"user_id": obj.get("client_reference_id")}),
        customer_id=None, subscription_id=ref(obj.get("subscription")))
    if user_id is None:
        return "ignored: unknown user"
    # The subscription itself arrives as customer.subscription.* events.
    linked = await sync.link_customer(session, user_id=user_id, customer_id=ref(obj.get("customer")))
    return "customer linked" if linked else "customer already known"


HANDLERS: dict[str, Handler] = {
    "customer.subscription.created": _subscription,
    "customer.subscription.updated": _subscription,
    "customer.subscription.deleted": _subscription,
    "invoice.paid": _invoice_paid,
    "invoice.payment_succeeded": _invoice_paid,
    "invoice.payment_failed": _invoice_failed,
    "payment_intent.succeeded": _payment_succeeded,
    "checkout.session.completed": _checkout_completed,
}


async def receive(
    session: AsyncSession, *, payload: bytes, signature: str | None, settings: Settings,
) -> dict[str, Any]:
    """Verify, record the event id (once), apply it; duplicates change nothing."""
    event = verified_event(payload, signature, settings)
    taken = (await session.execute(
        insert(StripeEvent).values(
            id=event["id"], type=event["type"], stripe_created_at=sync.event_time(event["created"]),
            payload=event,
        ).on_conflict_do_nothing(index_elements=[StripeEvent.id]).returning(StripeEvent.id)
    )).scalar_one_or_none()
    if taken is None:
        return {"received": True, "duplicate": True, "result": None}
    handler = HANDLERS.get(event["type"])
    try:
        result = await handler(session, event, event["data"]["object"]) if handler else "ignored: unhandled type"
    except (KeyError, TypeError, ValueError) as exc:  # signed but not the shape of its type
        raise ValidationFailed(f"The {event['type']} event is malformed: {exc!r}") from exc
    await session.execute(update(StripeEvent).where(StripeEvent.id == event["id"]).values(result=result))
    log.info("stripe event %s %s: %s", event["id"], event["type"], result)
    return {"received": True, "duplicate": False, "result": result}
