"""Stripe webhooks: verify the signature over the raw body, apply each event id once
(or park it until it can apply: docs/providers.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import StripeEvent
from server.adapters.billing.stripe_objects import (
    API_VERSION,
    MAX_TIMESTAMP,
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
# A signed event of the right type whose data does not fit it: a 400 (Stripe shows it), never a 500.
MALFORMED = (KeyError, TypeError, ValueError, AttributeError, OverflowError)
RELATED_RETRIES = 20  # parked events of one customer retried right after one of its events applies


_last_unconfigured_warning = [0.0]


def _warn_unconfigured() -> None:
    # Anyone can post here: an operator needs to hear of it, not once per request.
    now = time.monotonic()
    if now - _last_unconfigured_warning[0] >= 60 or not _last_unconfigured_warning[0]:
        _last_unconfigured_warning[0] = now
        log.error("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set (said at most once a minute)")


def verified_event(payload: bytes, signature: str | None, settings: Settings) -> dict[str, Any]:
    """The event, if `signature` is Stripe's for this exact body and recent enough."""
    secret = settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else None
    if not secret:
        _warn_unconfigured()
        raise InvalidSignature("Stripe webhooks are not configured on this server")
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
    if not (isinstance(event, dict) and isinstance(event.get("id"), str) and 0 < len(event["id"]) <= 255
            and isinstance(event.get("type"), str) and 0 < len(event["type"]) <= 128
            and type(event.get("created")) is int and 0 <= event["created"] <= MAX_TIMESTAMP
            and isinstance((event.get("data") or {}).get("object"), dict)):
        raise ValidationFailed("The event lacks id, type, created or data.object")
    return event


def check_api_version(event: Mapping[str, Any], metrics: Any = None) -> bool:
    """Events come in the endpoint's API version; say so loudly when it is not ours."""
    version = event.get("api_version")
    if version == API_VERSION:
        return True
    log.warning("stripe event %s (%s) has api_version %r, not the pinned %s: its objects are read "
                "through the older-field fallbacks; update the webhook endpoint's version "
                "(docs/providers.md)", event["id"], event["type"], version, API_VERSION)
    if metrics is not None:
        metrics.stripe_api_version_mismatch.labels(str(version)[:64]).inc()
    return False


async def _subscription(session: AsyncSession, event: Mapping, obj: Mapping) -> str:
    applied = await sync.apply_subscription(session, state=subscription_state(obj),
                                            event_at=sync.event_time(event["created"]))
    return f"subscription {applied.note}"


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
        raise sync.Deferred("the checkout session belongs to no known user")
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


def _customer_of(obj: Mapping[str, Any]) -> str | None:
    try:
        return ref(obj.get("customer"))
    except ValueError:
        return None


def _retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


async def _apply(session: AsyncSession, event: Mapping[str, Any], *, attempts: int) -> tuple[str, bool]:
    """Apply one recorded event: (result, parked). Its stripe_events row is locked by the caller."""
    handler = HANDLERS.get(event["type"])
    obj = event["data"]["object"]
    try:
        async with session.begin_nested():  # a deferred event leaves nothing half-written
            result = await handler(session, event, obj) if handler else "ignored: unhandled type"
    except sync.Deferred as exc:
        await session.execute(update(StripeEvent).where(StripeEvent.id == event["id"]).values(
            status="parked", result=f"parked: {exc}", attempts=attempts,
            retry_at=datetime.now(UTC) + _retry_delay(attempts)))
        log.info("stripe event %s %s parked: %s", event["id"], event["type"], exc)
        return f"parked: {exc}", True
    except MALFORMED as exc:
        raise ValidationFailed(f"The {event['type']} event is malformed: {exc!r}") from exc
    await session.execute(update(StripeEvent).where(StripeEvent.id == event["id"]).values(
        status="processed", result=result, attempts=attempts, retry_at=None))
    log.info("stripe event %s %s: %s", event["id"], event["type"], result)
    return result, False


async def receive(
    session: AsyncSession, *, payload: bytes, signature: str | None, settings: Settings,
    metrics: Any = None,
) -> dict[str, Any]:
    """Verify, record the event id (once), apply it; duplicates change nothing."""
    event = verified_event(payload, signature, settings)
    check_api_version(event, metrics)
    customer_id = _customer_of(event["data"]["object"])
    # The insert is the lock: a concurrent copy of the event waits on the primary key, then
    # finds it taken; if applying fails, the insert rolls back with the rest and Stripe's retry
    # applies it later. Applying reads only the payload and our database, so the answer is fast.
    taken = (await session.execute(
        insert(StripeEvent).values(
            id=event["id"], type=event["type"], stripe_created_at=sync.event_time(event["created"]),
            payload=event, status="parked", customer_id=customer_id,
            api_version=str(event.get("api_version"))[:64],
        ).on_conflict_do_nothing(index_elements=[StripeEvent.id]).returning(StripeEvent.id)
    )).scalar_one_or_none()
    attempts = 1
    if taken is None:
        known = (await session.execute(select(StripeEvent.status, StripeEvent.attempts).where(
            StripeEvent.id == event["id"]).with_for_update())).one()
        if known.status != "parked":
            _count(metrics, "duplicate")
            return {"received": True, "duplicate": True, "result": None, "parked": False}
        attempts = known.attempts + 1  # Stripe sent a parked event again: try it now
    result, parked = await _apply(session, event, attempts=attempts)
    _count(metrics, "parked" if parked else "processed")
    if not parked and customer_id:
        await retry_parked(session, customer_id=customer_id, limit=RELATED_RETRIES)
    return {"received": True, "duplicate": False, "result": result, "parked": parked}


def _count(metrics: Any, outcome: str) -> None:
    if metrics is not None:
        metrics.stripe_webhook_events.labels(outcome).inc()


async def retry_parked(
    session: AsyncSession, *, customer_id: str | None = None, limit: int = 100,
    due_before: datetime | None = None,
) -> list[tuple[str, str]]:
    """Try parked events again, oldest Stripe event first: (event id, result) of each."""
    stmt = (select(StripeEvent.id, StripeEvent.payload, StripeEvent.attempts)
            .where(StripeEvent.status == "parked")
            .order_by(StripeEvent.stripe_created_at, StripeEvent.id).limit(limit)
            .with_for_update(skip_locked=True))
    if customer_id is not None:
        stmt = stmt.where(StripeEvent.customer_id == customer_id)
    if due_before is not None:
        stmt = stmt.where(StripeEvent.retry_at <= due_before)
    outcomes = []
    for row in (await session.execute(stmt)).all():
        try:
            async with session.begin_nested():  # one bad event never blocks the others
                result, _ = await _apply(session, row.payload, attempts=row.attempts + 1)
        except ValidationFailed as exc:  # it was readable when parked; give it up loudly
            log.error("parked stripe event %s cannot be read: %s", row.id, exc.message)
            await session.execute(update(StripeEvent).where(StripeEvent.id == row.id).values(
                status="dropped", result=f"dropped: {exc.message}"[:1000], retry_at=None))
            result = "dropped"
        except Exception:
            log.exception("parked stripe event %s failed again; left parked", row.id)
            result = "failed"
        outcomes.append((row.id, result))
    return outcomes


async def drop_expired(session: AsyncSession, *, older_than: datetime) -> int:
    """Parked events received before `older_than` are given up (as Stripe gives up retrying)."""
    dropped = (await session.execute(
        update(StripeEvent).where(StripeEvent.status == "parked", StripeEvent.received_at < older_than)
        .values(status="dropped", retry_at=None).returning(StripeEvent.id, StripeEvent.type,
                                                            StripeEvent.result))).all()
    for row in dropped:
        log.error("stripe event %s (%s) could never be applied and was dropped: %s",
                  row.id, row.type, row.result)
    return len(dropped)
