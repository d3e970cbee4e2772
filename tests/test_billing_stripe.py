"""Billing against a fake Stripe on loopback: the real stripe SDK (async, pinned version) talks
to it over HTTP, and its webhooks reach the app signed exactly as Stripe signs them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from server.adapters.billing.stripe import API_VERSION
from tests.conftest import _asyncpg_dsn, start_app
from tests.support.api import Api, User
from tests.support.fake_stripe import FakeStripe, StripeFailure, sign


@pytest.fixture
async def stripe():
    async with FakeStripe().running() as fake:
        yield fake


@pytest.fixture
def stripe_settings(settings, stripe: FakeStripe):
    return settings.model_copy(update={
        "stripe_secret_key": SecretStr(stripe.secret_key),
        "stripe_webhook_secret": SecretStr(stripe.webhook_secret),
        "stripe_api_base": stripe.url,
    })


@pytest.fixture
async def sapi(stripe_settings, stripe: FakeStripe):
    server = await start_app(stripe_settings)
    base = str(server.make_url("")).rstrip("/")
    stripe.webhook_url = base + "/api/subscriptions/webhook"
    client = Api(base)
    yield client
    await client.close()
    await server.close()


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def balance(api: Api, user: User) -> int:
    reply = await api.get("/api/credits", token=user.access_token)
    assert reply.status == 200
    return reply.body["balance"]


async def subscribe_and_pay(api: Api, stripe: FakeStripe, user: User, plan: str = "pro") -> dict:
    created = await api.post("/api/subscriptions", json={"plan_id": plan}, token=user.access_token)
    assert created.status == 201, created
    sub = stripe.subscriptions[created.body["subscription"]["stripe_subscription_id"]]
    stripe.pay_invoice(sub["latest_invoice"])
    results = await stripe.deliver_pending()
    assert all(status == 200 for _, status, _ in results), results
    return sub


async def stream_events(stripe_settings, user: User) -> list[str]:
    """The names of the user's durable events, from the outbox."""
    import asyncpg

    conn = await asyncpg.connect(stripe_settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch("SELECT name FROM user_events WHERE user_id = $1 ORDER BY seq", uuid.UUID(user.id))
    finally:
        await conn.close()
    return [row["name"] for row in rows]


async def test_subscribe_confirm_payment_and_receive_plan_credits(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await sapi.register()
    created = await sapi.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token)
    assert created.status == 201, created
    sub = created.body["subscription"]
    assert sub["status"] == "incomplete" and sub["plan_id"] == "pro"
    fake_sub = stripe.subscriptions[sub["stripe_subscription_id"]]
    invoice = stripe.invoices[fake_sub["latest_invoice"]]
    assert created.body["client_secret"] == invoice["confirmation_secret"]["client_secret"]
    assert created.body["plan"]["id"] == "free"  # nothing paid yet

    # What the SDK sent: pinned version, default_incomplete, the price from settings, our metadata.
    [customer_call] = stripe.calls("POST", "customers")
    [create_call] = stripe.calls("POST", "subscriptions")
    assert create_call["headers"]["Stripe-Version"] == API_VERSION
    assert create_call["params"]["payment_behavior"] == "default_incomplete"
    assert create_call["params"]["items"] == [{"price": "price_pro"}]
    assert create_call["params"]["expand"] == ["latest_invoice.confirmation_secret"]
    assert create_call["params"]["metadata"] == {"user_id": user.id, "plan_id": "pro"}
    assert customer_call["params"]["metadata"] == {"user_id": user.id}
    stored = await db.fetchval("SELECT stripe_customer_id FROM users WHERE id = $1", uuid.UUID(user.id))
    assert stored == fake_sub["customer"]

    results = await stripe.deliver_pending()
    assert [(t, s) for t, s, _ in results] == [
        ("customer.created", 200), ("customer.subscription.created", 200),
        ("invoice.created", 200), ("invoice.finalized", 200)]
    assert results[0][2]["result"] == "ignored: unhandled type"
    assert await balance(sapi, user) == 25

    stripe.pay_invoice(invoice["id"])
    results = {t: body for t, _, body in await stripe.deliver_pending()}
    assert results["invoice.paid"]["result"] == "granted 500"
    assert results["invoice.payment_succeeded"]["result"] == "already granted"
    assert results["payment_intent.succeeded"]["result"] == "ignored: not a credit pack payment"
    assert results["customer.subscription.updated"]["result"] == "subscription updated"

    current = await sapi.get("/api/subscriptions", token=user.access_token)
    assert current.body["subscription"]["status"] == "active"
    assert current.body["plan"]["id"] == "pro" and current.body["plan"]["avatar_limit"] == 10
    assert await balance(sapi, user) == 525
    grant = (await sapi.get("/api/credits/transactions", token=user.access_token)).body["items"][0]
    assert (grant["type"], grant["amount"], grant["reference_id"]) == ("grant", 500, invoice["id"])
    assert await db.fetchval("SELECT count(*) FROM credit_transactions WHERE idempotency_key = $1",
                             f"invoice:{invoice['id']}:grant") == 1


async def test_customer_is_created_once_per_user(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await sapi.register()
    replies = await asyncio.gather(*(
        sapi.post("/api/subscriptions", json={"plan_id": "starter"}, token=user.access_token)
        for _ in range(3)))
    assert all(r.status == 201 for r in replies), replies
    # An unpaid attempt is replaced by the next one, so exactly one is still live.
    live = await db.fetch("SELECT stripe_subscription_id FROM user_subscriptions "
                          "WHERE user_id = $1 AND status = 'incomplete'", uuid.UUID(user.id))
    assert len(live) == 1
    canceled = [s for s in stripe.subscriptions.values() if s["status"] == "canceled"]
    assert len(canceled) == 2
    pack = await sapi.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_100"},
                           token=user.access_token)
    assert pack.status == 201
    assert len(stripe.customers) == 1
    [customer] = stripe.customers
    assert {s["customer"] for s in stripe.subscriptions.values()} == {customer}
    assert stripe.payment_intents[pack.body["payment_intent_id"]]["customer"] == customer


async def test_upgrade_bills_now_and_the_next_invoice_grants_the_new_plan(
        sapi: Api, stripe: FakeStripe) -> None:
    user = await sapi.register()
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    assert await balance(sapi, user) == 125
    ours = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]

    changed = await sapi.put(f"/api/subscriptions/{ours['id']}", json={"plan_id": "enterprise"},
                             token=user.access_token)
    assert changed.status == 200, changed
    assert changed.body["subscription"]["plan_id"] == "enterprise"
    assert changed.body["plan"]["avatar_limit"] == 50
    update = stripe.calls("POST", f"subscriptions/{sub['id']}")[-1]
    assert update["params"]["proration_behavior"] == "always_invoice"  # the difference is billed now
    assert update["params"]["items"] == [{"id": sub["items"]["data"][0]["id"], "price": "price_enterprise"}]
    assert sub["items"]["data"][0]["price"]["id"] == "price_enterprise"
    await stripe.deliver_pending()
    assert await balance(sapi, user) == 125

    invoice = stripe.renew(sub["id"])
    await stripe.deliver_pending()
    assert await balance(sapi, user) == 2125
    after = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    assert after["current_period_end"] > ours["current_period_end"]
    assert invoice["billing_reason"] == "subscription_cycle"

    # A downgrade refunds nothing: the credits of the dearer plan cannot be bought back cheap.
    down = await sapi.put(f"/api/subscriptions/{ours['id']}", json={"plan_id": "starter"},
                          token=user.access_token)
    assert down.status == 200 and down.body["subscription"]["plan_id"] == "starter"
    assert stripe.calls("POST", f"subscriptions/{sub['id']}")[-1]["params"]["proration_behavior"] == "none"
    await stripe.deliver_pending()
    assert await balance(sapi, user) == 2125


async def test_cancel_at_period_end_reactivate_and_fall_back_to_free(
        sapi: Api, stripe: FakeStripe, stripe_settings) -> None:
    user = await sapi.register()
    sub = await subscribe_and_pay(sapi, stripe, user, "pro")
    ours = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]

    canceled = await sapi.post(f"/api/subscriptions/{ours['id']}/cancel", token=user.access_token)
    assert canceled.status == 200
    assert canceled.body["subscription"]["cancel_at_period_end"] is True
    assert stripe.calls("POST", f"subscriptions/{sub['id']}")[-1]["params"] == {"cancel_at_period_end": "true"}
    assert sub["cancel_at_period_end"] is True
    kept = await sapi.post(f"/api/subscriptions/{ours['id']}/reactivate", token=user.access_token)
    assert kept.body["subscription"]["cancel_at_period_end"] is False and not sub["cancel_at_period_end"]
    await sapi.post(f"/api/subscriptions/{ours['id']}/cancel", token=user.access_token)
    await stripe.deliver_pending()

    stripe.end_subscription(sub["id"])  # the period ran out
    [(kind, status, body)] = await stripe.deliver_pending()
    assert (kind, status, body["result"]) == ("customer.subscription.deleted", 200, "subscription updated")
    current = await sapi.get("/api/subscriptions", token=user.access_token)
    assert current.body == {"subscription": None, "plan": current.body["plan"]}
    assert current.body["plan"]["id"] == "free" and current.body["plan"]["avatar_limit"] == 1
    assert await balance(sapi, user) == 525  # credits already granted stay
    again = await sapi.post(f"/api/subscriptions/{ours['id']}/reactivate", token=user.access_token)
    assert again.status == 409
    history = (await sapi.get("/api/subscriptions/history", token=user.access_token)).body
    assert history["total"] == 1 and history["items"][0]["status"] == "canceled"
    assert history["items"][0]["ended_at"] is not None
    events = await stream_events(stripe_settings, user)
    assert events.count("subscription.updated") >= 5


async def test_failed_renewal_marks_past_due_and_tells_the_user(
        sapi: Api, stripe: FakeStripe, stripe_settings, db) -> None:
    user = await sapi.register()
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    before = await stream_events(stripe_settings, user)
    stripe.renew(sub["id"], paid=False)
    failed = stripe.take("invoice.payment_failed")
    [(status, body)] = [await stripe.deliver(e) for e in failed]
    assert status == 200 and body["result"] == "payment failed; subscription past_due"
    current = await sapi.get("/api/subscriptions", token=user.access_token)
    assert current.body["subscription"]["status"] == "past_due"
    assert current.body["plan"]["id"] == "starter"  # still entitled while Stripe retries
    activity = await db.fetchrow("SELECT type, message FROM activity_events WHERE user_id = $1 "
                                 "ORDER BY created_at DESC LIMIT 1", uuid.UUID(user.id))
    assert activity["type"] == "billing.payment_failed" and "payment method" in activity["message"]
    new = (await stream_events(stripe_settings, user))[len(before):]
    assert "subscription.updated" in new and "activity" in new
    await stripe.deliver_pending()  # the subscription.updated(past_due) that follows
    assert await balance(sapi, user) == 125  # a failed invoice grants nothing


async def test_credit_pack_is_granted_once_when_the_payment_succeeds(sapi: Api, stripe: FakeStripe) -> None:
    user = await sapi.register()
    reply = await sapi.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_100"},
                            token=user.access_token)
    assert reply.status == 201, reply
    intent = stripe.payment_intents[reply.body["payment_intent_id"]]
    assert reply.body["client_secret"] == intent["client_secret"]
    assert (reply.body["amount_cents"], reply.body["credits"], reply.body["status"]) == (999, 100, "requires_payment")
    assert intent["amount"] == 999 and intent["metadata"]["credits"] == "100"
    await stripe.deliver_pending()
    assert await balance(sapi, user) == 25

    event = stripe.succeed_payment_intent(intent["id"])
    stripe.take()
    assert (await stripe.deliver(event))[1]["result"] == "granted 100"
    assert await balance(sapi, user) == 125
    checkout = stripe.event("checkout.session.completed", {
        "id": "cs_test_1", "object": "checkout.session", "mode": "payment", "payment_status": "paid",
        "payment_intent": intent["id"], "amount_total": 999, "client_reference_id": user.id,
        "metadata": {"kind": "credit_pack", "user_id": user.id, "pack_id": "credits_100", "credits": "100"}})
    assert (await stripe.deliver(checkout))[1]["result"] == "already granted"
    assert await balance(sapi, user) == 125
    purchases = (await sapi.get("/api/credits/transactions?type=purchase", token=user.access_token)).body
    assert purchases["total"] == 1


async def test_webhook_signature_is_checked_over_the_raw_body(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await sapi.register()
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    invoice = stripe.renew(sub["id"], paid=True)
    [paid] = stripe.take("invoice.paid")
    stripe.take()
    body = json.dumps(paid).encode()
    good = sign(body, stripe.webhook_secret)
    tampered = body.replace(b'"amount_paid": 999', b'"amount_paid": 1')
    assert tampered != body
    attempts = {
        "tampered body": (tampered, good),
        "wrong secret": (body, sign(body, "whsec_not_ours")),
        "stale timestamp": (body, sign(body, stripe.webhook_secret, int(time.time()) - 301)),
        "missing header": (body, None),
        "garbage header": (body, "t=abc,v1=zz"),
        "other scheme": (body, good.replace("v1=", "v0=")),
    }
    for name, (payload, signature) in attempts.items():
        status, reply = await stripe.post(payload, signature)
        assert (status, reply["error"]) == (400, "invalid_signature"), name
    assert await db.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", paid["id"]) == 0
    assert await balance(sapi, user) == 125

    recent = sign(body, stripe.webhook_secret, int(time.time()) - 200)  # within the tolerance
    status, reply = await stripe.post(body, recent)
    assert status == 200 and reply["result"] == "granted 100"
    assert await balance(sapi, user) == 225
    assert invoice["id"] in await db.fetchval("SELECT payload::text FROM stripe_events WHERE id = $1", paid["id"])

    not_json = b"not json at all"
    status, reply = await stripe.post(not_json, sign(not_json, stripe.webhook_secret))
    assert (status, reply["error"]) == (400, "validation_error")


async def test_duplicate_events_grant_once_serially_and_concurrently(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await sapi.register()
    sub = await subscribe_and_pay(sapi, stripe, user, "pro")
    stripe.renew(sub["id"])
    [paid] = stripe.take("invoice.paid")
    stripe.take()
    first = await stripe.deliver(paid)
    second = await stripe.deliver(paid)
    assert first[1]["duplicate"] is False and second[1] == {"received": True, "duplicate": True, "result": None}
    assert await balance(sapi, user) == 1025

    stripe.renew(sub["id"])
    [paid_again] = stripe.take("invoice.paid")
    stripe.take()
    replies = await stripe.deliver_concurrently(paid_again, 20)
    assert all(status == 200 for status, _ in replies), replies
    assert sum(not body["duplicate"] for _, body in replies) == 1
    assert await balance(sapi, user) == 1525
    invoice_id = paid_again["data"]["object"]["id"]
    assert await db.fetchval("SELECT count(*) FROM credit_transactions WHERE reference_id = $1", invoice_id) == 1

    # The same invoice under another event id (invoice.payment_succeeded) still grants once.
    copy = stripe.event("invoice.payment_succeeded", paid_again["data"]["object"])
    replies = await stripe.deliver_concurrently(copy, 20)
    assert [body["result"] for _, body in replies].count("already granted") == 1
    assert await balance(sapi, user) == 1525


async def test_out_of_order_subscription_events_never_move_back(sapi: Api, stripe: FakeStripe) -> None:
    user = await sapi.register()
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    now = int(time.time())
    item = sub["items"]["data"][0]
    first_end = item["current_period_end"]

    def snapshot(**changes) -> dict:
        obj = json.loads(json.dumps(sub))
        period = changes.pop("period", None)
        if period:
            obj["items"]["data"][0]["current_period_start"], obj["items"]["data"][0]["current_period_end"] = period
        obj.update(changes)
        return obj

    later = stripe.event("customer.subscription.updated", snapshot(
        period=(first_end, first_end + 2_592_000)), created=now + 20)
    earlier = stripe.event("customer.subscription.updated", snapshot(
        cancel_at_period_end=True), created=now + 10)
    assert (await stripe.deliver(later))[1]["result"] == "subscription updated"
    assert (await stripe.deliver(earlier))[1]["result"] == "subscription skipped: older than the state already applied"
    current = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    assert current["cancel_at_period_end"] is False
    assert current["current_period_end"].startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(first_end + 2_592_000)))

    # A newer event that still carries the old period cannot move the period back.
    stale_period = stripe.event("customer.subscription.updated", snapshot(
        period=(item["current_period_start"], first_end)), created=now + 30)
    await stripe.deliver(stale_period)
    again = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    assert again["current_period_end"] == current["current_period_end"]

    # A late `created` (incomplete) after the payment: a subscription never returns to incomplete.
    late_created = stripe.event("customer.subscription.created", snapshot(status="incomplete"), created=now + 40)
    assert "never returns to incomplete" in (await stripe.deliver(late_created))[1]["result"]

    deleted = stripe.event("customer.subscription.deleted", snapshot(status="canceled", ended_at=now + 50),
                           created=now + 50)
    revived = stripe.event("customer.subscription.updated", snapshot(status="active"), created=now + 60)
    await stripe.deliver(deleted)
    assert "already canceled" in (await stripe.deliver(revived))[1]["result"]
    current = await sapi.get("/api/subscriptions", token=user.access_token)
    assert current.body["subscription"] is None and current.body["plan"]["id"] == "free"


async def test_subscription_webhook_before_the_api_answer_is_recorded_once(
        sapi: Api, stripe: FakeStripe, db) -> None:
    """Stripe may call the webhook before our create request has committed."""
    user = await sapi.register()
    original = stripe._create_subscription
    delivered: list = []

    def create_and_deliver_first(params: dict) -> dict:
        body = original(params)
        events = stripe.take("customer.subscription.created")
        delivered.append(asyncio.ensure_future(stripe.deliver(events[0])))
        return body

    stripe._create_subscription = create_and_deliver_first  # type: ignore[method-assign]
    created = await sapi.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token)
    assert created.status == 201, created
    status, body = await delivered[0]
    assert (status, body["result"]) == (200, "subscription unchanged")
    rows = await db.fetch("SELECT status FROM user_subscriptions WHERE user_id = $1", uuid.UUID(user.id))
    assert [r["status"] for r in rows] == ["incomplete"]


async def test_provider_errors_are_503_and_change_nothing(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await sapi.register()
    stripe.fail("POST", "subscriptions", StripeFailure(400, "No such price: 'price_pro'", code="resource_missing"))
    reply = await sapi.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token)
    assert (reply.status, reply.body["error"]) == (503, "service_unavailable")
    assert await db.fetchval("SELECT count(*) FROM user_subscriptions WHERE user_id = $1", uuid.UUID(user.id)) == 0
    assert await db.fetchval("SELECT stripe_customer_id FROM users WHERE id = $1", uuid.UUID(user.id)) is None
    assert await balance(sapi, user) == 25
    # The retried request reuses the customer Stripe already made (same idempotency key).
    ok = await sapi.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token)
    assert ok.status == 201
    assert len(stripe.customers) == 1 and len(stripe.calls("POST", "customers")) == 2
    assert await db.fetchval("SELECT stripe_customer_id FROM users WHERE id = $1",
                             uuid.UUID(user.id)) == next(iter(stripe.customers))

    stripe.fail("POST", "payment_intents", StripeFailure(503, "Stripe is down", type="api_error"))
    stripe.fail("POST", "payment_intents", StripeFailure(503, "Stripe is down", type="api_error"))
    stripe.fail("POST", "payment_intents", StripeFailure(503, "Stripe is down", type="api_error"))
    down = await sapi.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_100"},
                           token=user.access_token)
    assert (down.status, down.body["error"]) == (503, "service_unavailable")
    assert len(stripe.calls("POST", "payment_intents")) == 3  # the SDK retried twice
    assert not [p for p in stripe.payment_intents.values() if p["metadata"]]
    assert await balance(sapi, user) == 25


async def test_unknown_and_foreign_events_are_acknowledged_and_ignored(sapi: Api, stripe: FakeStripe, db) -> None:
    event = stripe.event("charge.dispute.created", {"id": "dp_1", "object": "dispute"})
    status, body = await stripe.deliver(event)
    assert (status, body["result"]) == (200, "ignored: unhandled type")
    foreign = stripe.event("invoice.paid", {
        "id": "in_foreign", "object": "invoice", "customer": "cus_someone_else",
        "billing_reason": "subscription_cycle", "amount_paid": 999, "lines": {"data": []}})
    status, body = await stripe.deliver(foreign)
    assert (status, body["result"]) == (200, "ignored: unknown customer")
    recorded = await db.fetchval("SELECT result FROM stripe_events WHERE id = $1", foreign["id"])
    assert recorded == "ignored: unknown customer"
    payload = orjson.loads(await db.fetchval("SELECT payload::text FROM stripe_events WHERE id = $1", event["id"]))
    assert payload["type"] == "charge.dispute.created"


async def test_checkout_session_links_the_customer_once(sapi: Api, stripe: FakeStripe, db) -> None:
    alice, bob = await sapi.register(), await sapi.register()
    customer = f"cus_checkout_{uuid.uuid4().hex[:8]}"

    def completed(user: User) -> dict:
        return stripe.event("checkout.session.completed", {
            "id": f"cs_{uuid.uuid4().hex[:8]}", "object": "checkout.session", "mode": "subscription",
            "status": "complete", "payment_status": "paid", "client_reference_id": user.id,
            "customer": customer, "subscription": f"sub_{uuid.uuid4().hex[:8]}", "metadata": {}})

    assert (await stripe.deliver(completed(alice)))[1]["result"] == "customer linked"
    assert (await stripe.deliver(completed(alice)))[1]["result"] == "customer already known"
    assert (await stripe.deliver(completed(bob)))[1]["result"] == "customer already known"  # taken
    stored = {r["id"]: r["stripe_customer_id"] for r in await db.fetch(
        "SELECT id, stripe_customer_id FROM users WHERE id = ANY($1::uuid[])",
        [uuid.UUID(alice.id), uuid.UUID(bob.id)])}
    assert stored == {uuid.UUID(alice.id): customer, uuid.UUID(bob.id): None}
