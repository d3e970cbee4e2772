"""The billing gateway interface and the provider facts it reports."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from server.adapters.errors import UpstreamError


class BillingError(UpstreamError):
    """The payment provider refused or failed a call."""


# A gateway only reports what is now true at the provider (these facts); server.billing.sync
# turns them into rows, credits and events, for API calls and webhooks alike.
@dataclass(frozen=True)
class SubscriptionState:
    provider_id: str  # stored as user_subscriptions.stripe_subscription_id
    status: str
    customer_id: str | None = None
    user_id: uuid.UUID | None = None  # from the subscription's metadata, when present
    plan_id: str | None = None  # from metadata; the price decides when it is known
    price_id: str | None = None
    item_id: str | None = None  # the subscription item a plan change replaces
    cancel_at_period_end: bool = False
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    canceled_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class InvoiceFact:
    invoice_id: str
    subscription_id: str | None
    billing_reason: str | None
    customer_id: str | None = None
    user_id: uuid.UUID | None = None
    plan_id: str | None = None
    price_id: str | None = None


@dataclass(frozen=True)
class StartedSubscription:
    state: SubscriptionState
    client_secret: str | None  # for the client to confirm the first payment; None if nothing to pay
    paid_invoice: InvoiceFact | None = None  # set when the first invoice is already paid


@dataclass(frozen=True)
class PeriodEnd:
    state: SubscriptionState  # renewed into the next period, or ended
    paid_invoice: InvoiceFact | None = None  # the next period's invoice, when it is paid


@dataclass(frozen=True)
class PackPayment:
    payment_id: str
    amount_cents: int
    credits: int
    pack_id: str
    user_id: uuid.UUID
    client_secret: str | None
    succeeded: bool  # True when the money is already in (no client step left)


@dataclass(frozen=True)
class CreditPack:
    id: str
    credits: int
    price_cents: int
    currency: str = "usd"


class BillingGateway(Protocol):
    """Every call that changes something takes `key`: the provider's idempotency key, made
    from our own operation (server.billing.service), so a repeated call changes nothing twice."""

    name: str

    async def create_customer(self, *, user_id: uuid.UUID, email: str, key: str) -> str | None:
        """The provider's customer for this user (None when the provider has no customers)."""

    async def start_subscription(
        self, *, user_id: uuid.UUID, customer_id: str | None, plan: dict[str, Any], key: str
    ) -> StartedSubscription: ...

    async def change_plan(self, *, subscription: dict[str, Any], plan: dict[str, Any],
                          upgrade: bool, key: str) -> SubscriptionState:
        """Move to `plan`: an upgrade is billed (prorated) at once, a downgrade refunds nothing.

        Either way the new plan's credits come with the next paid period."""

    async def set_cancel_at_period_end(
        self, *, subscription: dict[str, Any], cancel: bool, key: str
    ) -> SubscriptionState: ...

    async def cancel_now(self, *, subscription: dict[str, Any], key: str) -> SubscriptionState: ...

    async def start_pack_payment(
        self, *, user_id: uuid.UUID, customer_id: str | None, pack: CreditPack, key: str
    ) -> PackPayment: ...

    async def period_ended(self, *, subscription: dict[str, Any]) -> PeriodEnd | None:
        """What happens when a period runs out; None when the provider reports it itself."""

    async def close(self) -> None: ...
