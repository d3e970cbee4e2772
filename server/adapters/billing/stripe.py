"""Stripe through the official SDK's async API (StripeClient, *_async) on aiohttp."""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
import stripe

from server.adapters.billing.base import (
    BillingError,
    CreditPack,
    PackPayment,
    PeriodEnd,
    StartedSubscription,
    SubscriptionState,
)
from server.adapters.billing.stripe_objects import (
    API_VERSION,
    PACK_KIND,
    invoice_fact,
    pack_payment,
    subscription_state,
)
from server.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class StripeBilling:
    name = "stripe"

    def __init__(self, settings: Settings) -> None:
        if settings.stripe_secret_key is None:
            raise ValueError("StripeBilling needs STRIPE_SECRET_KEY")
        timeout = aiohttp.ClientTimeout(total=settings.stripe_timeout_seconds)
        # Our own session (built inside open_resources' loop): the CA bundle is read at start,
        # not on the loop during the first payment, and closing never opens a session.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=stripe.ca_bundle_path)),
            timeout=timeout,
        )
        self._http = stripe.AIOHTTPClient(session=self._session, timeout=timeout)
        # STRIPE_API_BASE: a Stripe-compatible server (the suite's fake Stripe).
        base = {"api": settings.stripe_api_base.rstrip("/")} if settings.stripe_api_base else None
        self.client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            # Pinned so object shapes cannot drift under us (docs/providers.md: moving it).
            stripe_version=API_VERSION,
            base_addresses=base,  # type: ignore[arg-type]
            http_client=self._http,
            max_network_retries=2,
        )

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except stripe.StripeError as exc:
            status = exc.http_status
            # Worth asking again with the same idempotency key only if Stripe saved no answer
            # under it: no answer reached us, or a rate limit (refused before it ran). A 5xx is
            # saved and would come back again; whether it happened is told by the webhooks.
            transient = isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError))
            code = "idempotency_error" if isinstance(exc, stripe.IdempotencyError) else (
                exc.code or ("connection_error" if status is None else "provider_error"))
            log.warning("stripe %s failed: %s (status %s, %s)", what, exc.user_message or exc,
                        status, code)
            raise BillingError(f"Stripe {what} failed: {exc.user_message or 'error'}",
                               transient=transient, status=status, code=code) from exc

    async def create_customer(self, *, user_id: uuid.UUID, email: str, key: str) -> str | None:
        customer = await self._call("customer create", self.client.v1.customers.create_async(
            params={"email": email, "metadata": {"user_id": str(user_id)}},
            options={"idempotency_key": key},
        ))
        return customer.id

    async def start_subscription(
        self, *, user_id: uuid.UUID, customer_id: str | None, plan: dict[str, Any], key: str
    ) -> StartedSubscription:
        created = await self._call("subscription create", self.client.v1.subscriptions.create_async(
            params={
                "customer": customer_id or "",
                "items": [{"price": plan["stripe_price_id"]}],
                "payment_behavior": "default_incomplete",
                "payment_settings": {"save_default_payment_method": "on_subscription"},
                "expand": ["latest_invoice.confirmation_secret"],
                "metadata": {"user_id": str(user_id), "plan_id": plan["id"]},
            },
            options={"idempotency_key": key},
        ))
        data = _plain(created)
        invoice = data.get("latest_invoice")
        secret = None
        paid = None
        if isinstance(invoice, dict):
            secret = (invoice.get("confirmation_secret") or {}).get("client_secret")
            if invoice.get("status") == "paid":  # nothing left to pay (e.g. a full discount)
                paid = invoice_fact(invoice)
        return StartedSubscription(state=subscription_state(data), client_secret=secret,
                                   paid_invoice=paid)

    async def change_plan(self, *, subscription: dict[str, Any], plan: dict[str, Any],
                          upgrade: bool, key: str) -> SubscriptionState:
        sid = subscription["stripe_subscription_id"]
        # An upgrade bills the prorated difference now; a downgrade refunds nothing, so
        # a plan's credits can never be taken and its price handed back.
        proration = "always_invoice" if upgrade else "none"
        current = subscription_state(_plain(await self._call(
            "subscription retrieve", self.client.v1.subscriptions.retrieve_async(sid))))
        updated = await self._call("subscription update", self.client.v1.subscriptions.update_async(
            sid,
            params={
                "items": [{"id": current.item_id or "", "price": plan["stripe_price_id"]}],
                "proration_behavior": proration,
                "metadata": {"plan_id": plan["id"]},
            },
            options={"idempotency_key": key},
        ))
        return subscription_state(_plain(updated))

    async def set_cancel_at_period_end(
        self, *, subscription: dict[str, Any], cancel: bool, key: str
    ) -> SubscriptionState:
        updated = await self._call("subscription update", self.client.v1.subscriptions.update_async(
            subscription["stripe_subscription_id"], params={"cancel_at_period_end": cancel},
            options={"idempotency_key": key},
        ))
        return subscription_state(_plain(updated))

    async def cancel_now(self, *, subscription: dict[str, Any], key: str) -> SubscriptionState:
        # A DELETE: Stripe ignores idempotency keys on it and asks not to send one.
        canceled = await self._call("subscription cancel", self.client.v1.subscriptions.cancel_async(
            subscription["stripe_subscription_id"]))
        return subscription_state(_plain(canceled))

    async def start_pack_payment(
        self, *, user_id: uuid.UUID, customer_id: str | None, pack: CreditPack, key: str
    ) -> PackPayment:
        params: dict[str, Any] = {
            "amount": pack.price_cents,
            "currency": pack.currency,
            "automatic_payment_methods": {"enabled": True},
            "description": f"{pack.credits} Lustify credits",
            "metadata": {"kind": PACK_KIND, "user_id": str(user_id), "pack_id": pack.id,
                         "credits": str(pack.credits)},
        }
        if customer_id:
            params["customer"] = customer_id
        intent = await self._call("payment intent create", self.client.v1.payment_intents.create_async(
            params=params, options={"idempotency_key": key}))
        payment = pack_payment(_plain(intent))
        if payment is None:
            raise BillingError("Stripe returned a payment intent without our metadata", transient=False)
        return payment

    async def period_ended(self, *, subscription: dict[str, Any]) -> PeriodEnd | None:
        return None  # Stripe renews or ends it and says so through webhooks

    async def create_webhook_endpoint(self, *, url: str, events: list[str]) -> tuple[str, str]:
        """(id, signing secret) of a new endpoint whose events come in our pinned API version."""
        create = self.client.v1.webhook_endpoints.create_async(
            params={"url": url, "enabled_events": events,  # type: ignore[typeddict-item]
                    "api_version": API_VERSION, "description": "Lustify billing"},
            options={"idempotency_key": f"lustify:webhook-endpoint:{url}:{API_VERSION}"})
        endpoint = await self._call("webhook endpoint create", create)
        return endpoint.id, endpoint.secret or ""

    async def close(self) -> None:
        await self._session.close()
