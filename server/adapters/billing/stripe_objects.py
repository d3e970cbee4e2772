"""Stripe's objects (subscription, invoice, payment_intent, checkout.session) read into
provider facts, for API responses and webhook payloads alike."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from server.adapters.billing.base import InvoiceFact, PackPayment, SubscriptionState

# The Stripe API version we read and write: stripe-python 16.1's own (pyproject pins >=16.1,<17);
# the webhook endpoint is created with it too. docs/providers.md says how to move it.
# Fields are read where it puts them (periods on subscription items, an invoice's subscription
# under parent.subscription_details, line prices under pricing.price_details), falling back to
# the older top-level fields so replayed older events still read.
API_VERSION = "2026-10-28.endive"
PACK_KIND = "credit_pack"
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime holds
MAX_AMOUNT = 2**31 - 1  # amounts and credits are stored as 32-bit integers


def bounded(value: Any, *, high: int, what: str) -> int:
    """A whole number in 0..high; anything else (1e20, "abc", true) is a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} {value!r} is not a number")
    try:
        number = int(value)
    except (OverflowError, ValueError):
        raise ValueError(f"{what} {value!r} is not a whole number") from None
    if not 0 <= number <= high:
        raise ValueError(f"{what} {value!r} is out of range")
    return number


def ref(value: Any) -> str | None:
    """An expandable field's id, whether it came expanded or as a bare id."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        return None
    return identifier(value, "id")


def plan_of(metadata: Mapping[str, Any]) -> str | None:
    value = metadata.get("plan_id")
    return value if isinstance(value, str) and 0 < len(value) <= 32 else None


def identifier(value: Any, what: str, *, max_length: int = 255) -> str:
    """A provider id or status as we store it: a non-empty string that fits its column."""
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ValueError(f"{what} {value!r} is not an id")
    return value


def timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(bounded(value, high=MAX_TIMESTAMP, what="timestamp"), UTC)


def amount(value: Any, what: str) -> int:
    return bounded(value or 0, high=MAX_AMOUNT, what=what)


def user_id_of(metadata: Any) -> uuid.UUID | None:
    if not isinstance(metadata, Mapping):
        return None
    try:
        return uuid.UUID(str(metadata.get("user_id")))
    except ValueError:
        return None


def subscription_state(obj: Mapping[str, Any]) -> SubscriptionState:
    items = (obj.get("items") or {}).get("data") or []
    item = items[0] if items else {}
    metadata = obj.get("metadata") or {}
    return SubscriptionState(
        provider_id=identifier(obj["id"], "id"),
        status=identifier(obj["status"], "status", max_length=32),
        customer_id=ref(obj.get("customer")),
        user_id=user_id_of(metadata),
        plan_id=plan_of(metadata),
        price_id=ref(item.get("price")),
        item_id=ref(item.get("id")),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        current_period_start=timestamp(item.get("current_period_start", obj.get("current_period_start"))),
        current_period_end=timestamp(item.get("current_period_end", obj.get("current_period_end"))),
        canceled_at=timestamp(obj.get("canceled_at")),
        ended_at=timestamp(obj.get("ended_at")),
    )


def _line_price(line: Mapping[str, Any]) -> str | None:
    details = ((line.get("pricing") or {}).get("price_details") or {})
    return ref(details.get("price")) or ref(line.get("price"))


def _is_proration(line: Mapping[str, Any]) -> bool:
    parent = line.get("parent") or {}
    details = parent.get("subscription_item_details") or parent.get("invoice_item_details") or {}
    return bool(details.get("proration", line.get("proration", False)))


def invoice_fact(obj: Mapping[str, Any]) -> InvoiceFact:
    """An invoice (paid or failed) with the subscription, user and price it is for."""
    details = ((obj.get("parent") or {}).get("subscription_details") or {})
    metadata = details.get("metadata") or (obj.get("subscription_details") or {}).get("metadata") or {}
    lines = (obj.get("lines") or {}).get("data") or []
    prices = [_line_price(line) for line in lines if not _is_proration(line)]
    amount(obj.get("amount_paid"), "amount_paid")  # not used, but an absurd one is no invoice of ours
    return InvoiceFact(
        invoice_id=identifier(obj["id"], "id"),
        subscription_id=ref(details.get("subscription")) or ref(obj.get("subscription")),
        billing_reason=obj.get("billing_reason"),
        customer_id=ref(obj.get("customer")),
        user_id=user_id_of(metadata),
        plan_id=plan_of(metadata),
        price_id=next((p for p in prices if p), None),
    )


def pack_payment(obj: Mapping[str, Any]) -> PackPayment | None:
    """A credit-pack payment intent, or None for any other payment (e.g. an invoice's)."""
    metadata = obj.get("metadata") or {}
    user_id = user_id_of(metadata)
    if metadata.get("kind") != PACK_KIND or user_id is None:
        return None
    return PackPayment(
        payment_id=identifier(obj["id"], "id"),
        amount_cents=amount(obj.get("amount"), "amount"),
        credits=amount(metadata.get("credits"), "credits"),
        pack_id=str(metadata.get("pack_id") or ""),
        user_id=user_id,
        client_secret=obj.get("client_secret"),
        succeeded=obj.get("status") == "succeeded",
    )


def checkout_pack_payment(obj: Mapping[str, Any]) -> PackPayment | None:
    """A paid checkout session that sold a credit pack (keyed by its payment intent)."""
    metadata = obj.get("metadata") or {}
    user_id = user_id_of(metadata) or user_id_of({"user_id": obj.get("client_reference_id")})
    payment_id = ref(obj.get("payment_intent"))
    if (obj.get("mode") != "payment" or metadata.get("kind") != PACK_KIND or user_id is None
            or payment_id is None):
        return None
    return PackPayment(
        payment_id=payment_id,
        amount_cents=amount(obj.get("amount_total"), "amount_total"),
        credits=amount(metadata.get("credits"), "credits"),
        pack_id=str(metadata.get("pack_id") or ""),
        user_id=user_id,
        client_secret=None,
        succeeded=obj.get("payment_status") == "paid",
    )
