"""A Stripe API on loopback for the suite: the real SDK is pointed at it (STRIPE_API_BASE).

It speaks Stripe's wire format (form-encoded bodies with bracketed keys, Bearer secret
key, Stripe-Version and Idempotency-Key headers, `{"error": {...}}` failures) and
answers in the pinned API version's object shapes (periods on subscription items,
invoices with parent.subscription_details and confirmation_secret). Idempotency keys
behave as Stripe documents: the first answer to a key, error or not, is saved and
replayed; the same key with other parameters is refused with Stripe's idempotency_error. What Stripe does
on its own (a customer paying, a renewal, a failed charge, a period ending) the test
triggers; each produces the events Stripe would send, signed the way Stripe signs them
(`t=<unix>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>`) and delivered on request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

API_VERSION = "2026-10-28.endive"
PRE_BASIL_VERSION = "2025-02-24.acacia"  # the last version before periods moved to items
MONTH = 30 * 86400
IDEMPOTENCY_MISMATCH = ("Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with. Try using a key other than '{key}' if you "
                        "meant to execute a different request.")
PRICES = {"price_starter": 999, "price_pro": 2999, "price_enterprise": 9999}
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}{secrets.token_hex(6)}"


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding (`items[0][price]=p`, `expand[0]=x`) back into nested values."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = None if last else parts[i + 1]
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if last:
                    node[idx] = value
                else:
                    if node[idx] is None:
                        node[idx] = [] if nxt.isdigit() else {}
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if nxt.isdigit() else {})
    return root


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for `payload`."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def pre_basil(obj: dict) -> dict:
    """A subscription or invoice as API versions before 2025-03-31.basil shaped it: periods on
    the subscription, the invoice's subscription and metadata at its top level, line items with
    `price` and `proration` (no `parent` or `pricing`), no confirmation_secret."""
    obj = json.loads(json.dumps(obj))
    if obj.get("object") == "subscription":
        items = obj["items"]["data"]
        obj["current_period_start"] = items[0].pop("current_period_start")
        obj["current_period_end"] = items[0].pop("current_period_end")
        for item in items[1:]:
            item.pop("current_period_start", None)
            item.pop("current_period_end", None)
    elif obj.get("object") == "invoice":
        details = (obj.pop("parent", None) or {}).get("subscription_details") or {}
        obj["subscription"] = details.get("subscription")
        obj["subscription_details"] = {"metadata": details.get("metadata") or {}}
        obj.pop("confirmation_secret", None)
        for line in obj["lines"]["data"]:
            pricing = line.pop("pricing", None) or {}
            parent = line.pop("parent", None) or {}
            item = parent.get("subscription_item_details") or {}
            line["price"] = {"id": pricing.get("price_details", {}).get("price"), "object": "price"}
            line["proration"] = bool(item.get("proration"))
            line["subscription"] = item.get("subscription")
            line["type"] = "subscription"
    return obj


class StripeFailure(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": {
            "type": type, "message": message, "code": code, "param": param}}


class FakeStripe:
    def __init__(self, *, secret_key: str = "sk_test_fake_lustify", webhook_secret: str = "whsec_fake_lustify") -> None:
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.customers: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.invoices: dict[str, dict] = {}
        self.payment_intents: dict[str, dict] = {}
        self.requests: list[dict] = []  # every API call: method, path, params, headers
        self.pending: list[dict] = []  # events produced, not yet delivered
        self.idempotent: dict[str, tuple[str, str, dict, int, dict]] = {}  # key -> request, answer
        self.webhook_endpoints: dict[str, dict] = {}
        self.failures: list[tuple[str, str, StripeFailure]] = []  # (method, path, failure), once each
        # Awaited with (method, path) while a request is being answered: what happens meanwhile;
        # a hook that returns "drop" closes the connection instead of answering.
        self.during: list[Callable[[str, str], Awaitable[str | None]]] = []
        self.webhook_url: str | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- server ---------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeStripe]:
        app = web.Application()
        app.router.add_route("*", "/v1/{path:.*}", self._dispatch)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession()
        try:
            yield self
        finally:
            await self._http.close()
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.secret_key}":
            return web.json_response({"error": {
                "type": "invalid_request_error", "message": "Invalid API Key provided"}}, status=401)
        if request.method == "POST":
            params = parse_form(list((await request.post()).items()))  # type: ignore[arg-type]
        else:
            params = parse_form(list(request.query.items()))
        path = request.match_info["path"]
        self.requests.append({"method": request.method, "path": path, "params": params,
                              "headers": dict(request.headers)})
        key = request.headers.get("Idempotency-Key")
        headers = {"Request-Id": new_id("req")}
        if request.method == "POST" and key and key in self.idempotent:
            method, first_path, first_params, status, body = self.idempotent[key]
            if (method, first_path, first_params) != (request.method, path, params):
                status, body = 400, StripeFailure(400, IDEMPOTENCY_MISMATCH.format(key=key),
                                                  type="idempotency_error").body
            else:
                headers["Idempotent-Replayed"] = "true"
        else:
            try:
                planned = next((f for f in self.failures if (f[0], f[1]) == (request.method, path)), None)
                if planned is not None:
                    self.failures.remove(planned)
                    raise planned[2]
                status, body = 200, self._route(request.method, path, params)
            except StripeFailure as failure:
                status, body = failure.status, failure.body
            if request.method == "POST" and key:  # Stripe saves the first answer, errors included
                self.idempotent[key] = (request.method, path, params, status, body)
        for hook in self.during:
            if await hook(request.method, path) == "drop":  # the answer is lost on the way back
                assert request.transport is not None
                request.transport.close()
        return web.json_response(body, status=status, headers=headers)

    def _route(self, method: str, path: str, params: dict) -> dict:
        parts = path.strip("/").split("/")
        match method, parts:
            case "POST", ["customers"]:
                return self._create_customer(params)
            case "GET", ["customers", cid]:
                return self._get(self.customers, cid, "customer")
            case "POST", ["subscriptions"]:
                return self._create_subscription(params)
            case "GET", ["subscriptions", sid]:
                return self._expand(self._get(self.subscriptions, sid, "subscription"), params)
            case "POST", ["subscriptions", sid]:
                return self._update_subscription(sid, params)
            case "DELETE", ["subscriptions", sid]:
                return self.end_subscription(sid)
            case "POST", ["payment_intents"]:
                return self._create_payment_intent(params)
            case "GET", ["payment_intents", pid]:
                return self._get(self.payment_intents, pid, "payment_intent")
            case "GET", ["invoices", iid]:
                return self._get(self.invoices, iid, "invoice")
            case "POST", ["webhook_endpoints"]:
                return self._create_webhook_endpoint(params)
        raise StripeFailure(404, f"Unrecognized request URL ({method}: /v1/{path})")

    @staticmethod
    def _get(table: dict, object_id: str, kind: str) -> dict:
        if object_id not in table:
            raise StripeFailure(404, f"No such {kind}: '{object_id}'", code="resource_missing", param="id")
        return table[object_id]

    # -- objects --------------------------------------------------------------------------

    def _create_customer(self, params: dict) -> dict:
        customer = {"id": new_id("cus"), "object": "customer", "email": params.get("email"),
                    "metadata": params.get("metadata", {}), "created": int(time.time()),
                    "livemode": False}
        self.customers[customer["id"]] = customer
        self.emit("customer.created", customer)
        return customer

    def _create_webhook_endpoint(self, params: dict) -> dict:
        if not params.get("url") or not params.get("enabled_events"):
            raise StripeFailure(400, "Missing required param: url or enabled_events.", param="url")
        version = params.get("api_version")
        if version is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}\.[a-z]+", version):
            raise StripeFailure(400, f"Invalid api_version: {version}", param="api_version")
        endpoint = {"id": new_id("we"), "object": "webhook_endpoint", "url": params["url"],
                    "api_version": version, "enabled_events": params["enabled_events"],
                    "description": params.get("description"), "status": "enabled",
                    "secret": f"whsec_{secrets.token_hex(16)}", "created": int(time.time()),
                    "livemode": False, "metadata": {}}
        self.webhook_endpoints[endpoint["id"]] = endpoint
        return endpoint

    def _price(self, price_id: str) -> dict:
        if price_id not in PRICES:
            raise StripeFailure(400, f"No such price: '{price_id}'", code="resource_missing",
                                param="items[0][price]")
        return {"id": price_id, "object": "price", "unit_amount": PRICES[price_id], "currency": "usd",
                "recurring": {"interval": "month", "interval_count": 1}, "product": f"prod_{price_id}",
                "type": "recurring", "active": True}

    def _create_subscription(self, params: dict) -> dict:
        customer = params.get("customer")
        if customer not in self.customers:
            raise StripeFailure(400, f"No such customer: '{customer}'", code="resource_missing",
                                param="customer")
        if params.get("payment_behavior") != "default_incomplete":
            raise StripeFailure(400, "this fake only supports payment_behavior=default_incomplete")
        items = params.get("items") or []
        if len(items) != 1 or not items[0].get("price"):
            raise StripeFailure(400, "Exactly one item with a price is supported", param="items")
        now = int(time.time())
        sub = {
            "id": new_id("sub"), "object": "subscription", "customer": customer,
            "status": "incomplete", "cancel_at_period_end": False, "cancel_at": None,
            "canceled_at": None, "ended_at": None, "created": now, "start_date": now,
            "billing_cycle_anchor": now, "collection_method": "charge_automatically",
            "currency": "usd", "livemode": False, "metadata": params.get("metadata", {}),
            "payment_settings": params.get("payment_settings", {}),
            "payment_behavior": params.get("payment_behavior"),
            "items": {"object": "list", "has_more": False, "total_count": 1, "data": []},
            "latest_invoice": None,
        }
        sub["items"]["data"].append({
            "id": new_id("si"), "object": "subscription_item", "quantity": 1,
            "subscription": sub["id"], "price": self._price(items[0]["price"]),
            "current_period_start": now, "current_period_end": now + MONTH,
        })
        self.subscriptions[sub["id"]] = sub
        invoice = self._invoice(sub, "subscription_create")
        self.emit("customer.subscription.created", sub)
        self.emit("invoice.created", invoice)
        self.emit("invoice.finalized", invoice)
        return self._expand(sub, params)

    def _invoice(self, sub: dict, reason: str) -> dict:
        item = sub["items"]["data"][0]
        amount = item["price"]["unit_amount"]
        intent = self._new_payment_intent(amount, sub["customer"], {})
        invoice = {
            "id": new_id("in"), "object": "invoice", "customer": sub["customer"], "status": "open",
            "billing_reason": reason, "amount_due": amount, "amount_paid": 0,
            "amount_remaining": amount, "currency": "usd", "created": int(time.time()),
            "period_start": item["current_period_start"], "period_end": item["current_period_end"],
            "confirmation_secret": {"client_secret": intent["client_secret"], "type": "payment_intent"},
            "parent": {"type": "subscription_details", "quote_details": None,
                       "subscription_details": {"subscription": sub["id"],
                                                "metadata": dict(sub["metadata"])}},
            "lines": {"object": "list", "has_more": False, "total_count": 1, "data": [{
                "id": new_id("il"), "object": "line_item", "amount": amount, "currency": "usd",
                "period": {"start": item["current_period_start"], "end": item["current_period_end"]},
                "pricing": {"type": "price_details", "unit_amount_decimal": str(amount),
                            "price_details": {"price": item["price"]["id"],
                                              "product": item["price"]["product"]}},
                "parent": {"type": "subscription_item_details", "invoice_item_details": None,
                           "subscription_item_details": {
                               "subscription": sub["id"], "subscription_item": item["id"],
                               "proration": False, "invoice_item": None,
                               "proration_details": {"credited_items": None}}},
                "quantity": 1}]},
            "livemode": False,
        }
        self.invoices[invoice["id"]] = invoice
        sub["latest_invoice"] = invoice["id"]
        return invoice

    def _expand(self, sub: dict, params: dict) -> dict:
        body = json.loads(json.dumps(sub))
        if "latest_invoice.confirmation_secret" in (params.get("expand") or []) or \
                "latest_invoice" in (params.get("expand") or []):
            body["latest_invoice"] = self.invoices.get(sub["latest_invoice"])
        return body

    def _update_subscription(self, sid: str, params: dict) -> dict:
        sub = self._get(self.subscriptions, sid, "subscription")
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise StripeFailure(400, "A canceled subscription can only update its metadata")
        previous: dict[str, Any] = {}
        if "cancel_at_period_end" in params:
            cancel = params["cancel_at_period_end"] == "true"
            previous["cancel_at_period_end"] = sub["cancel_at_period_end"]
            sub["cancel_at_period_end"] = cancel
            sub["cancel_at"] = sub["items"]["data"][0]["current_period_end"] if cancel else None
            sub["canceled_at"] = int(time.time()) if cancel else None
        for change in params.get("items") or []:
            item = next((i for i in sub["items"]["data"] if i["id"] == change.get("id")), None)
            if item is None:
                raise StripeFailure(400, f"No such subscription item: '{change.get('id')}'",
                                    param="items[0][id]")
            previous["items"] = json.loads(json.dumps(sub["items"]))
            item["price"] = self._price(change["price"])
        if "proration_behavior" in params:
            sub["last_proration_behavior"] = params["proration_behavior"]
        if "metadata" in params:
            sub["metadata"] = {**sub["metadata"], **params["metadata"]}
        self.emit("customer.subscription.updated", sub, previous=previous)
        return self._expand(sub, params)

    def _new_payment_intent(self, amount: int, customer: str | None, metadata: dict) -> dict:
        pid = new_id("pi")
        intent = {"id": pid, "object": "payment_intent", "amount": amount, "amount_received": 0,
                  "currency": "usd", "status": "requires_payment_method",
                  "client_secret": f"{pid}_secret_{secrets.token_hex(8)}", "customer": customer,
                  "metadata": metadata, "created": int(time.time()), "livemode": False,
                  "automatic_payment_methods": {"enabled": True}}
        self.payment_intents[pid] = intent
        return intent

    def _create_payment_intent(self, params: dict) -> dict:
        if not str(params.get("amount", "")).isdigit() or int(params["amount"]) < 50:
            raise StripeFailure(400, "Amount must be at least $0.50 usd", param="amount")
        intent = self._new_payment_intent(int(params["amount"]), params.get("customer"),
                                          params.get("metadata", {}))
        intent["currency"] = params.get("currency", "usd")
        intent["description"] = params.get("description")
        self.emit("payment_intent.created", intent)
        return intent

    # -- what Stripe does by itself ---------------------------------------------------------

    def pay_invoice(self, invoice_id: str) -> dict:
        """The customer's payment succeeds: invoice paid, subscription active."""
        invoice = self.invoices[invoice_id]
        invoice.update(status="paid", amount_paid=invoice["amount_due"], amount_remaining=0)
        sid = invoice["parent"]["subscription_details"]["subscription"]
        sub = self.subscriptions[sid]
        intent = self.payment_intents[invoice["confirmation_secret"]["client_secret"].split("_secret_")[0]]
        intent.update(status="succeeded", amount_received=intent["amount"])
        self.emit("payment_intent.succeeded", intent)
        self.emit("invoice.paid", invoice)
        self.emit("invoice.payment_succeeded", invoice)
        if sub["status"] != "active":
            previous = {"status": sub["status"]}
            sub["status"] = "active"
            self.emit("customer.subscription.updated", sub, previous=previous)
        return invoice

    def renew(self, sid: str, *, paid: bool = True) -> dict:
        """The period ends and Stripe bills the next one (successfully or not)."""
        sub = self.subscriptions[sid]
        item = sub["items"]["data"][0]
        previous = {"items": json.loads(json.dumps(sub["items"]))}
        item["current_period_start"] = item["current_period_end"]
        item["current_period_end"] += MONTH
        invoice = self._invoice(sub, "subscription_cycle")
        self.emit("invoice.created", invoice)
        if paid:
            self.emit("customer.subscription.updated", sub, previous=previous)
            self.pay_invoice(invoice["id"])
        else:
            invoice["attempt_count"] = 1
            self.emit("invoice.payment_failed", invoice)
            previous["status"] = sub["status"]
            sub["status"] = "past_due"
            self.emit("customer.subscription.updated", sub, previous=previous)
        return invoice

    def end_subscription(self, sid: str) -> dict:
        """The subscription ends (canceled now, or its cancel_at_period_end came due)."""
        sub = self._get(self.subscriptions, sid, "subscription")
        now = int(time.time())
        sub.update(status="canceled", ended_at=now, canceled_at=sub["canceled_at"] or now)
        self.emit("customer.subscription.deleted", sub)
        return json.loads(json.dumps(sub))

    def succeed_payment_intent(self, pid: str) -> dict:
        intent = self.payment_intents[pid]
        intent.update(status="succeeded", amount_received=intent["amount"])
        return self.emit("payment_intent.succeeded", intent)

    # -- events and their delivery --------------------------------------------------------

    def event(self, type: str, obj: dict, *, previous: dict | None = None,
              created: int | None = None, api_version: str = API_VERSION) -> dict:
        """An event as Stripe sends it (a snapshot of `obj` now, in the endpoint's API version)."""
        obj = json.loads(json.dumps(obj))
        if api_version < "2025-03-31":
            obj = pre_basil(obj)
        data: dict[str, Any] = {"object": obj}
        if previous:
            data["previous_attributes"] = previous
        return {"id": new_id("evt"), "object": "event", "api_version": api_version,
                "created": int(time.time()) if created is None else created, "data": data,
                "livemode": False, "pending_webhooks": 1,
                "request": {"id": new_id("req"), "idempotency_key": None}, "type": type}

    def emit(self, type: str, obj: dict, *, previous: dict | None = None) -> dict:
        event = self.event(type, obj, previous=previous)
        self.pending.append(event)
        return event

    def take(self, *types: str) -> list[dict]:
        """Remove and return the pending events (of these types, if given)."""
        taken = [e for e in self.pending if not types or e["type"] in types]
        self.pending = [e for e in self.pending if e not in taken]
        return taken

    async def post(self, body: bytes, signature: str | None) -> tuple[int, Any]:
        assert self._http is not None and self.webhook_url, "start the fake and set webhook_url"
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        async with self._http.post(self.webhook_url, data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def deliver(self, event: dict, *, secret: str | None = None, timestamp: int | None = None) -> tuple[int, Any]:
        """POST one event, signed like Stripe (with another secret or time if asked)."""
        body = json.dumps(event, indent=2).encode()  # Stripe's bodies are pretty-printed JSON
        return await self.post(body, sign(body, secret or self.webhook_secret, timestamp))

    async def deliver_pending(self, *types: str) -> list[tuple[str, int, Any]]:
        """Deliver pending events in order; (type, status, body) of each."""
        results = []
        for event in self.take(*types):
            status, body = await self.deliver(event)
            results.append((event["type"], status, body))
        return results

    async def deliver_concurrently(self, event: dict, copies: int) -> list[tuple[int, Any]]:
        return await asyncio.gather(*(self.deliver(event) for _ in range(copies)))

    def fail(self, method: str, path: str, failure: StripeFailure) -> None:
        """Answer the next `method path` call with `failure` instead."""
        self.failures.append((method, path, failure))

    def calls(self, method: str, path_prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix)]
