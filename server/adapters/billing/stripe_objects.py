"""Reading Stripe's object shapes (subscription, invoice, payment_intent, checkout.session)
into provider facts. Used for API responses and webhook payloads alike.

Written against the pinned API version (periods on subscription items, an invoice's
subscription under parent.subscription_details, line prices under pricing.price_details),
with the older top-level fields as a fallback so replayed older events still read.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from server.adapters.billing.base import InvoiceFact, PackPayment, SubscriptionState

PACK_KIND = "credit_pack"


def ref(value: Any) -> str | None:
    """An expandable field's id, whether it came expanded or as a bare id."""
    if isinstance(value, Mapping):
        return value.get("id")
    return value if isinstance(value, str) else None


def timestamp(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value is not None else None


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
        provider_id=obj["id"],
        status=obj["status"],
        customer_id=ref(obj.get("customer")),
        user_id=user_id_of(metadata),
        plan_id=metadata.get("plan_id"),
        price_id=ref(item.get("price")),
        item_id=item.get("id"),
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
    return InvoiceFact(
        invoice_id=obj["id"],
        subscription_id=ref(details.get("subscription")) or ref(obj.get("subscription")),
        billing_reason=obj.get("billing_reason"),
        amount_paid=int(obj.get("amount_paid") or 0),
        customer_id=ref(obj.get("customer")),
        user_id=user_id_of(metadata),
        plan_id=metadata.get("plan_id"),
        price_id=next((p for p in prices if p), None),
    )


def pack_payment(obj: Mapping[str, Any]) -> PackPayment | None:
    """A credit-pack payment intent, or None for any other payment (e.g. an invoice's)."""
    metadata = obj.get("metadata") or {}
    user_id = user_id_of(metadata)
    if metadata.get("kind") != PACK_KIND or user_id is None:
        return None
    return PackPayment(
        payment_id=obj["id"],
        amount_cents=int(obj.get("amount") or 0),
        credits=int(metadata.get("credits") or 0),
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
        amount_cents=int(obj.get("amount_total") or 0),
        credits=int(metadata.get("credits") or 0),
        pack_id=str(metadata.get("pack_id") or ""),
        user_id=user_id,
        client_secret=None,
        succeeded=obj.get("payment_status") == "paid",
    )
