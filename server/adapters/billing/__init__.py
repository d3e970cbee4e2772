"""Billing: Stripe when STRIPE_SECRET_KEY is set, else local billing (paid at once)."""

from __future__ import annotations

from server.adapters.billing.base import (
    BillingError,
    BillingGateway,
    CreditPack,
    InvoiceFact,
    PackPayment,
    PeriodEnd,
    StartedSubscription,
    SubscriptionState,
)
from server.config import Settings


def make_billing(settings: Settings) -> BillingGateway:
    if settings.stripe_secret_key is not None and settings.stripe_secret_key.get_secret_value():
        from server.adapters.billing.stripe import StripeBilling

        return StripeBilling(settings)
    from server.adapters.billing.local import LocalBilling

    return LocalBilling()


__all__ = [
    "BillingError", "BillingGateway", "CreditPack", "InvoiceFact", "PackPayment",
    "PeriodEnd", "StartedSubscription", "SubscriptionState", "make_billing",
]
