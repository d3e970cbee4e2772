"""Billing against a fake Stripe on loopback: the real stripe SDK (async, pinned version) talks
to it over HTTP, and its webhooks reach the app signed exactly as Stripe signs them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from pydantic import SecretStr

from jobs.billing import billing_sweep, retry_parked_events
from server import cli, keys
from server.adapters.billing.stripe import API_VERSION
from server.auth.current_user import CurrentUser
from server.billing import service, webhooks
from server.resources import open_resources
from tests.conftest import _asyncpg_dsn, start_app
from tests.support.api import Api, User
from tests.support.fake_stripe import PRE_BASIL_VERSION, FakeStripe, StripeFailure, sign


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
    client.app = server.app  # type: ignore[attr-defined]
    yield client
    await client.close()
    await server.close()


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    yield conn
    await conn.close()


def current_user(user: User) -> CurrentUser:
    return CurrentUser(id=uuid.UUID(user.id), email=user.email, display_name=None, email_verified=True,
                       token_version=0, created_at=datetime.now(UTC))


async def buyer(api: Api, db) -> User:
    """A registered user whose email is verified (purchases need it; the email link itself is
    tested in test_auth)."""
    user = await api.register()
    await db.execute("UPDATE users SET email_verified = true WHERE id = $1", uuid.UUID(user.id))
    return user


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
    user = await buyer(sapi, db)
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
    user = await buyer(sapi, db)
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
        sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
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
        sapi: Api, stripe: FakeStripe, stripe_settings, db) -> None:
    user = await buyer(sapi, db)
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
    user = await buyer(sapi, db)
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


async def test_credit_pack_is_granted_once_when_the_payment_succeeds(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
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
    user = await buyer(sapi, db)
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
    user = await buyer(sapi, db)
    sub = await subscribe_and_pay(sapi, stripe, user, "pro")
    stripe.renew(sub["id"])
    [paid] = stripe.take("invoice.paid")
    stripe.take()
    first = await stripe.deliver(paid)
    second = await stripe.deliver(paid)
    assert first[1]["duplicate"] is False
    assert second[1] == {"received": True, "duplicate": True, "result": None, "parked": False}
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


async def test_out_of_order_subscription_events_never_move_back(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
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
    user = await buyer(sapi, db)
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
    # Whichever lands first records it; the other finds it there.
    assert status == 200 and body["result"] in ("subscription unchanged", "subscription created")
    rows = await db.fetch("SELECT status FROM user_subscriptions WHERE user_id = $1", uuid.UUID(user.id))
    assert [r["status"] for r in rows] == ["incomplete"]


async def test_provider_errors_are_503_and_change_nothing(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    stripe.fail("POST", "subscriptions", StripeFailure(400, "No such price: 'price_pro'", code="resource_missing"))
    reply = await sapi.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token)
    assert (reply.status, reply.body["error"]) == (503, "service_unavailable")
    assert "price" not in reply.body["message"]  # Stripe's details are for operators
    assert await db.fetchval("SELECT count(*) FROM user_subscriptions WHERE user_id = $1", uuid.UUID(user.id)) == 0
    assert await balance(sapi, user) == 25
    failed = await db.fetchrow("SELECT status, error FROM billing_operations WHERE user_id = $1", uuid.UUID(user.id))
    assert failed["status"] == "failed" and "No such price" in failed["error"]
    # The customer Stripe made was stored at once (its own transaction) and is used again.
    [customer] = stripe.customers
    assert await db.fetchval("SELECT stripe_customer_id FROM users WHERE id = $1", uuid.UUID(user.id)) == customer
    ok = await sapi.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token)
    assert ok.status == 201
    assert len(stripe.customers) == 1 and len(stripe.calls("POST", "customers")) == 1

    # A 5xx is saved by Stripe under the idempotency key: the SDK's retries get it back, the same.
    stripe.fail("POST", "payment_intents", StripeFailure(503, "Stripe is down", type="api_error"))
    down = await sapi.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_100"},
                           token=user.access_token)
    assert (down.status, down.body["error"]) == (503, "service_unavailable")
    tries = stripe.calls("POST", "payment_intents")
    assert len(tries) == 3 and len({t["headers"]["Idempotency-Key"] for t in tries}) == 1
    assert not [p for p in stripe.payment_intents.values() if p["metadata"]]
    assert await balance(sapi, user) == 25


async def test_every_stripe_post_carries_a_key_of_our_own_request(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    ours = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    await sapi.put(f"/api/subscriptions/{ours['id']}", json={"plan_id": "pro"}, token=user.access_token)
    await sapi.post(f"/api/subscriptions/{ours['id']}/cancel", token=user.access_token)
    await sapi.post(f"/api/subscriptions/{ours['id']}/reactivate", token=user.access_token)
    await sapi.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_100"}, token=user.access_token)
    posts = [r for r in stripe.requests if r["method"] == "POST"]
    assert [r["path"] for r in posts] == ["customers", "subscriptions", f"subscriptions/{sub['id']}",
                                          f"subscriptions/{sub['id']}", f"subscriptions/{sub['id']}",
                                          "payment_intents"]
    operations = await db.fetch("SELECT id FROM billing_operations WHERE user_id = $1 AND status = 'done'",
                                uuid.UUID(user.id))
    assert len(operations) == 5
    keys = [r["headers"]["Idempotency-Key"] for r in posts]
    assert len(set(keys)) == len(keys)  # one per call, none from the SDK's random ones
    for key in keys:
        assert key.startswith(f"lustify:{user.id}:op:")
        assert uuid.UUID(key.split(":")[3]) in {o["id"] for o in operations}


async def test_a_client_idempotency_key_maps_to_one_stripe_object(
        stripe_settings, sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    me = current_user(user)
    async with open_resources(stripe_settings) as res:
        first = await service.subscribe(res, user=me, plan_id="pro", idempotency_key="client-key-1")
        again = await service.subscribe(res, user=me, plan_id="pro", idempotency_key="client-key-1")
        pack = await service.buy_pack(res, user=me, pack_id="credits_100", idempotency_key="client-key-2")
        pack_again = await service.buy_pack(res, user=me, pack_id="credits_100", idempotency_key="client-key-2")
        other = await service.buy_pack(res, user=me, pack_id="credits_100", idempotency_key="client-key-3")
    assert first["subscription"]["id"] == again["subscription"]["id"]
    assert first["client_secret"] == again["client_secret"]
    assert len(stripe.subscriptions) == 1 and len(stripe.customers) == 1
    assert pack["payment_intent_id"] == pack_again["payment_intent_id"] != other["payment_intent_id"]
    creates = stripe.calls("POST", "subscriptions")
    assert len(creates) == 2 and creates[0]["headers"]["Idempotency-Key"] == creates[1]["headers"]["Idempotency-Key"]
    assert "client-key-1" not in creates[0]["headers"]["Idempotency-Key"]  # only its hash leaves us
    assert await db.fetchval("SELECT count(*) FROM user_subscriptions WHERE user_id = $1", uuid.UUID(user.id)) == 1


async def test_no_stripe_call_runs_inside_a_database_transaction(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    seen: list[tuple[str, str, int]] = []

    async def open_transactions(method: str, path: str) -> None:
        # While Stripe is answering us, none of the app's connections may hold a transaction.
        seen.append((method, path, await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL")))

    stripe.during.append(open_transactions)
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    ours = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    assert (await sapi.put(f"/api/subscriptions/{ours['id']}", json={"plan_id": "pro"},
                           token=user.access_token)).status == 200
    assert (await sapi.post(f"/api/subscriptions/{ours['id']}/cancel", token=user.access_token)).status == 200
    assert (await sapi.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_100"},
                            token=user.access_token)).status == 201
    assert {(m, p) for m, p, _ in seen} >= {("POST", "customers"), ("POST", "subscriptions"),
                                            ("GET", f"subscriptions/{sub['id']}"),
                                            ("POST", f"subscriptions/{sub['id']}"), ("POST", "payment_intents")}
    assert [(m, p) for m, p, count in seen if count] == []


async def test_a_lost_answer_is_finished_later_with_the_same_key(
        stripe_settings, sapi: Api, stripe: FakeStripe, db) -> None:
    """Stripe made the subscription but its answer never reached us (three times): the
    operation stays pending and the sweep finishes it, getting the same subscription back."""
    user = await buyer(sapi, db)

    async def lose_create_answers(method: str, path: str) -> str | None:
        return "drop" if (method, path) == ("POST", "subscriptions") else None

    stripe.during.append(lose_create_answers)
    reply = await sapi.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token)
    assert reply.status == 503, reply
    assert reply.body["error"] == "service_unavailable"
    assert len(stripe.subscriptions) == 1  # made at Stripe on the first try
    assert await db.fetchval("SELECT count(*) FROM user_subscriptions WHERE user_id = $1", uuid.UUID(user.id)) == 0
    pending = await db.fetchrow("SELECT id, status FROM billing_operations WHERE user_id = $1", uuid.UUID(user.id))
    assert pending["status"] == "pending"

    stripe.during.clear()
    async with open_resources(stripe_settings) as res:
        assert await billing_sweep({"res": res}) == {"operations": 1, "parked": 0, "rolled": 0}
    creates = stripe.calls("POST", "subscriptions")
    assert len(creates) == 4 and len({c["headers"]["Idempotency-Key"] for c in creates}) == 1
    assert len(stripe.subscriptions) == 1
    [stripe_sub] = stripe.subscriptions
    row = await db.fetchrow("SELECT stripe_subscription_id, status FROM user_subscriptions WHERE user_id = $1",
                            uuid.UUID(user.id))
    assert (row["stripe_subscription_id"], row["status"]) == (stripe_sub, "incomplete")
    assert await db.fetchval("SELECT status FROM billing_operations WHERE id = $1", pending["id"]) == "done"


async def test_a_dead_process_operation_is_taken_over_by_the_next_request(
        stripe_settings, sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    me = current_user(user)

    class ProcessDied(BaseException):
        pass

    dying = [True]
    async with open_resources(stripe_settings) as res:
        real = res.billing.start_pack_payment

        async def start_then_die(**kw):
            payment = await real(**kw)
            if dying:
                dying.clear()
                raise ProcessDied()  # nothing after the Stripe call runs, as if killed there
            return payment

        res.billing.start_pack_payment = start_then_die  # type: ignore[method-assign]
        with pytest.raises(ProcessDied):
            await service.buy_pack(res, user=me, pack_id="credits_500")
        # Time passes: the operation is stale (its process is gone) ...
        await db.execute("UPDATE billing_operations SET updated_at = now() - interval '1 hour' "
                         "WHERE user_id = $1", uuid.UUID(user.id))
        # ... and the user's next billing request finishes it first, with its own key.
        await service.buy_pack(res, user=me, pack_id="credits_100")
    intents = stripe.calls("POST", "payment_intents")
    assert len(intents) == 3 and intents[0]["headers"]["Idempotency-Key"] == intents[1]["headers"]["Idempotency-Key"]
    assert sorted(p["metadata"]["pack_id"] for p in stripe.payment_intents.values()) == ["credits_100", "credits_500"]
    ops = await db.fetch("SELECT status, attempts FROM billing_operations WHERE user_id = $1 ORDER BY created_at",
                         uuid.UUID(user.id))
    assert [(o["status"], o["attempts"]) for o in ops] == [("done", 2), ("done", 1)]


async def test_a_second_change_waits_for_the_first(stripe_settings, sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    inside, gate = asyncio.Event(), asyncio.Event()

    async def slow_subscription_create(method: str, path: str) -> None:
        if (method, path) == ("POST", "subscriptions"):
            inside.set()
            await gate.wait()

    stripe.during.append(slow_subscription_create)
    first = asyncio.ensure_future(sapi.post("/api/subscriptions", json={"plan_id": "pro"}, token=user.access_token))
    await asyncio.wait_for(inside.wait(), 10)  # the first is inside its Stripe call
    second = asyncio.ensure_future(sapi.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_100"},
                                             token=user.access_token))
    await asyncio.sleep(0.3)  # a window for the second to overtake (the negative needs one); it must not
    assert not stripe.calls("POST", "payment_intents") and not second.done()
    gate.set()
    assert (await first).status == 201 and (await second).status == 201
    assert stripe.calls("POST", "payment_intents")


async def test_fake_stripe_refuses_a_reused_key_like_stripe(stripe: FakeStripe) -> None:
    import stripe as stripe_sdk

    http = stripe_sdk.AIOHTTPClient()
    client = stripe_sdk.StripeClient(stripe.secret_key, base_addresses={"api": stripe.url},
                                     http_client=http, max_network_retries=0)
    params = {"email": "a@example.com", "metadata": {"user_id": "u1"}}
    first = await client.v1.customers.create_async(params=params, options={"idempotency_key": "k1"})
    replay = await client.v1.customers.create_async(params=params, options={"idempotency_key": "k1"})
    assert replay.id == first.id and len(stripe.customers) == 1
    with pytest.raises(stripe_sdk.IdempotencyError) as refused:
        await client.v1.customers.create_async(params={**params, "email": "b@example.com"},
                                               options={"idempotency_key": "k1"})
    assert refused.value.http_status == 400
    assert refused.value.error.type == "idempotency_error"
    assert str(refused.value.user_message).startswith(
        "Keys for idempotent requests can only be used with the same parameters they were first used with.")
    # Errors are saved and replayed too, even when the cause has gone.
    stripe.fail("POST", "payment_intents", StripeFailure(402, "Your card was declined.", type="card_error",
                                                         code="card_declined"))
    for _ in range(2):
        with pytest.raises(stripe_sdk.CardError):
            await client.v1.payment_intents.create_async(params={"amount": 999, "currency": "usd"},
                                                         options={"idempotency_key": "k2"})
    assert not stripe.payment_intents
    await http.close_async()


async def test_unknown_and_foreign_events_are_acknowledged_and_parked(
        stripe_settings, sapi: Api, stripe: FakeStripe, db) -> None:
    event = stripe.event("charge.dispute.created", {"id": "dp_1", "object": "dispute"})
    status, body = await stripe.deliver(event)
    assert (status, body["result"], body["parked"]) == (200, "ignored: unhandled type", False)
    foreign = stripe.event("invoice.paid", {
        "id": "in_foreign", "object": "invoice", "customer": "cus_someone_else",
        "billing_reason": "subscription_cycle", "amount_paid": 999, "lines": {"data": []}})
    status, body = await stripe.deliver(foreign)
    assert status == 200 and body["parked"] is True and "no known user" in body["result"]
    recorded = await db.fetchrow("SELECT status, customer_id FROM stripe_events WHERE id = $1", foreign["id"])
    assert (recorded["status"], recorded["customer_id"]) == ("parked", "cus_someone_else")
    payload = orjson.loads(await db.fetchval("SELECT payload::text FROM stripe_events WHERE id = $1", event["id"]))
    assert payload["type"] == "charge.dispute.created"
    # Parked events are given up after STRIPE_PARKED_EVENT_DAYS, as Stripe gives up retrying.
    await db.execute("UPDATE stripe_events SET received_at = now() - interval '4 days' WHERE id = $1", foreign["id"])
    async with open_resources(stripe_settings) as res:
        assert await retry_parked_events(res) == 0  # dropped, not tried again
    assert await db.fetchval("SELECT status FROM stripe_events WHERE id = $1", foreign["id"]) == "dropped"


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


def invoice_paid(customer: str, subscription: str, *, price: str = "price_starter") -> dict:
    """A paid renewal invoice as the pinned API version shapes it."""
    return {"id": f"in_{uuid.uuid4().hex[:12]}", "object": "invoice", "customer": customer, "status": "paid",
            "billing_reason": "subscription_cycle", "amount_paid": 999,
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": subscription, "metadata": {}}},
            "lines": {"data": [{"pricing": {"price_details": {"price": price}},
                                "parent": {"subscription_item_details": {"proration": False}}}]}}


async def test_an_event_that_cannot_apply_yet_is_applied_once_when_it_can(
        sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    customer, subscription = f"cus_{uuid.uuid4().hex[:10]}", f"sub_{uuid.uuid4().hex[:10]}"
    paid = stripe.event("invoice.paid", invoice_paid(customer, subscription))
    status, body = await stripe.deliver(paid)  # a customer we do not know yet
    assert (status, body["parked"], body["duplicate"]) == (200, True, False)
    status, body = await stripe.deliver(paid)  # Stripe sends it again: tried again, still parked
    assert (status, body["parked"], body["duplicate"]) == (200, True, False)
    assert await db.fetchval("SELECT attempts FROM stripe_events WHERE id = $1", paid["id"]) == 2
    assert await balance(sapi, user) == 25

    # Its checkout completes: the customer is linked, and the parked invoice applies at once.
    checkout = stripe.event("checkout.session.completed", {
        "id": f"cs_{uuid.uuid4().hex[:8]}", "object": "checkout.session", "mode": "subscription",
        "status": "complete", "payment_status": "paid", "client_reference_id": user.id,
        "customer": customer, "subscription": subscription, "metadata": {}})
    assert (await stripe.deliver(checkout))[1]["result"] == "customer linked"
    assert await balance(sapi, user) == 125
    row = await db.fetchrow("SELECT status, result FROM stripe_events WHERE id = $1", paid["id"])
    assert (row["status"], row["result"]) == ("processed", "granted 100")
    status, body = await stripe.deliver(paid)  # and once more: now a duplicate
    assert body["duplicate"] is True and await balance(sapi, user) == 125


async def test_the_sweep_applies_a_parked_event_once_its_price_is_configured(
        stripe_settings, sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    price = f"price_later_{uuid.uuid4().hex[:8]}"
    sub = stripe._create_subscription({
        "customer": stripe._create_customer({"email": user.email, "metadata": {"user_id": user.id}})["id"],
        "payment_behavior": "default_incomplete", "items": [{"price": "price_starter"}],
        "metadata": {"user_id": user.id}})
    sub["items"]["data"][0]["price"]["id"] = price  # a price this deployment has no plan for yet
    stripe.take()
    created = stripe.event("customer.subscription.created", sub)
    assert "unknown price" in (await stripe.deliver(created))[1]["result"]
    assert await db.fetchval("SELECT count(*) FROM user_subscriptions WHERE user_id = $1", uuid.UUID(user.id)) == 0

    # An operator adds the plan for that price (inactive: not on sale, but known).
    plan_id = f"later_{price[-8:]}"
    await db.execute("INSERT INTO subscription_plans (id, name, price_cents, credits_per_period, avatar_limit, "
                     "stripe_price_id, is_active) VALUES ($1, 'Later', 500, 50, 2, $2, false)", plan_id, price)
    try:
        async with open_resources(stripe_settings) as res:
            assert await retry_parked_events(res) == 0  # not due yet: parked events back off
            await db.execute("UPDATE stripe_events SET retry_at = now() - interval '1 second' WHERE id = $1",
                             created["id"])
            assert await retry_parked_events(res) == 1
            assert await retry_parked_events(res) == 0  # applied once, never again
        row = await db.fetchrow("SELECT plan_id, status FROM user_subscriptions WHERE user_id = $1",
                                uuid.UUID(user.id))
        assert (row["plan_id"], row["status"]) == (plan_id, "incomplete")
        assert await db.fetchval("SELECT status FROM stripe_events WHERE id = $1", created["id"]) == "processed"
    finally:  # the plans table is shared by the whole run
        await db.execute("DELETE FROM user_subscriptions WHERE plan_id = $1", plan_id)
        await db.execute("DELETE FROM subscription_plans WHERE id = $1", plan_id)


async def test_ordering_uses_stripes_created_never_our_clock(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    created = await sapi.post("/api/subscriptions", json={"plan_id": "starter"}, token=user.access_token)
    sub = stripe.subscriptions[created.body["subscription"]["stripe_subscription_id"]]
    stripe.take()
    # Stripe's clock is two minutes behind ours: its event is still the newest fact about the row.
    sub["status"] = "active"
    behind = int(time.time()) - 120
    activated = stripe.event("customer.subscription.updated", sub, created=behind)
    assert (await stripe.deliver(activated))[1]["result"] == "subscription updated"
    sub["cancel_at_period_end"] = True
    older = stripe.event("customer.subscription.updated", sub, created=behind - 10)
    assert (await stripe.deliver(older))[1]["result"] == "subscription skipped: older than the state already applied"
    current = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    assert (current["status"], current["cancel_at_period_end"]) == ("active", False)


async def test_an_answer_to_our_call_never_overwrites_a_newer_webhook(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    ours = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    delivered: list = []

    async def payment_fails_meanwhile(method: str, path: str) -> None:
        if (method, path) == ("POST", f"subscriptions/{sub['id']}") and not delivered:
            snapshot = {**json.loads(json.dumps(sub)), "status": "past_due", "cancel_at_period_end": False}
            delivered.append(await stripe.deliver(stripe.event(
                "customer.subscription.updated", snapshot, created=int(time.time()) + 5)))

    stripe.during.append(payment_fails_meanwhile)
    reply = await sapi.post(f"/api/subscriptions/{ours['id']}/cancel", token=user.access_token)
    assert reply.status == 200 and delivered[0][1]["result"] == "subscription updated"
    # Our call's answer (active, cancel at period end) is older news than the webhook's past_due.
    assert reply.body["subscription"]["status"] == "past_due"
    # The cancel's own event, created before the past_due one, is ordered by Stripe's clock too.
    results = {t: b["result"] for t, _, b in await stripe.deliver_pending()}
    assert results["customer.subscription.updated"] == "subscription skipped: older than the state already applied"
    assert (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]["status"] == "past_due"


async def test_signed_events_with_absurd_values_are_400_and_change_nothing(sapi: Api, stripe: FakeStripe, db) -> None:
    user = await buyer(sapi, db)
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    before = await balance(sapi, user)

    def sub_with(**changes) -> dict:
        obj = json.loads(json.dumps(sub))
        obj.update(changes)
        return obj

    far = json.loads(json.dumps(sub))
    far["items"]["data"][0]["current_period_start"] = 1e20
    absurd = [
        stripe.event("customer.subscription.updated", far),
        stripe.event("customer.subscription.updated", sub_with(canceled_at=10**30)),
        stripe.event("customer.subscription.updated", sub_with(status=42)),
        stripe.event("customer.subscription.updated", sub_with(id="sub_" + "x" * 300)),
        stripe.event("customer.subscription.updated", sub_with(items={"data": "not a list"})),
        stripe.event("invoice.paid", {**invoice_paid(sub["customer"], sub["id"]), "amount_paid": 1e30}),
        stripe.event("payment_intent.succeeded", {
            "id": "pi_absurd", "object": "payment_intent", "status": "succeeded", "amount": 999,
            "metadata": {"kind": "credit_pack", "user_id": user.id, "credits": "99999999999999"}}),
    ]
    huge_created = stripe.event("invoice.paid", invoice_paid(sub["customer"], sub["id"]))
    huge_created["created"] = 10**20
    for event in [*absurd, huge_created]:
        status, body = await stripe.deliver(event)
        assert (status, body["error"]) == (400, "validation_error"), (event["type"], body)
        assert await db.fetchval("SELECT count(*) FROM stripe_events WHERE id = $1", event["id"]) == 0
    assert await balance(sapi, user) == before
    current = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    assert current["status"] == "active"


async def test_a_pre_basil_payload_reads_through_the_fallbacks(
        sapi: Api, stripe: FakeStripe, db, caplog) -> None:
    user = await buyer(sapi, db)
    sub = await subscribe_and_pay(sapi, stripe, user, "starter")
    first_end = sub["items"]["data"][0]["current_period_end"]
    invoice = stripe.renew(sub["id"])
    stripe.take()
    # The same renewal, as an endpoint still on an API version before basil sends it.
    renewed = stripe.event("customer.subscription.updated", stripe.subscriptions[sub["id"]],
                           api_version=PRE_BASIL_VERSION)
    paid = stripe.event("invoice.paid", invoice, api_version=PRE_BASIL_VERSION)
    old_sub, old_invoice = renewed["data"]["object"], paid["data"]["object"]
    assert old_sub["current_period_end"] == first_end + 30 * 86400
    assert "current_period_end" not in old_sub["items"]["data"][0]
    assert old_invoice["subscription"] == sub["id"] and "parent" not in old_invoice
    assert old_invoice["lines"]["data"][0]["price"]["id"] == "price_starter"
    assert (await stripe.deliver(renewed))[1]["result"] == "subscription updated"
    assert (await stripe.deliver(paid))[1]["result"] == "granted 100"
    assert await balance(sapi, user) == 225
    current = (await sapi.get("/api/subscriptions", token=user.access_token)).body["subscription"]
    assert current["current_period_end"].startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(first_end + 30 * 86400)))
    # Operators are told, by a log line and a metric, that the endpoint is not on our version.
    assert any(r.levelname == "WARNING" and PRE_BASIL_VERSION in r.getMessage() for r in caplog.records)
    registry = sapi.app[keys.metrics].registry  # type: ignore[attr-defined]
    assert registry.get_sample_value("stripe_webhook_api_version_mismatch_total",
                                     {"api_version": PRE_BASIL_VERSION}) == 2
    assert registry.get_sample_value("stripe_webhook_api_version_mismatch_total",
                                     {"api_version": API_VERSION}) is None


async def test_the_webhook_endpoint_is_created_on_the_pinned_api_version(stripe_settings, stripe: FakeStripe) -> None:
    url = "https://api.example.com/api/subscriptions/webhook"
    endpoint_id, secret = await cli._create_stripe_webhook(stripe_settings, url)
    assert secret.startswith("whsec_")
    [call] = stripe.calls("POST", "webhook_endpoints")
    assert call["params"]["api_version"] == API_VERSION == stripe_sdk_version()
    assert sorted(call["params"]["enabled_events"]) == sorted(webhooks.HANDLERS)
    assert call["params"]["url"] == url and stripe.webhook_endpoints[endpoint_id]["api_version"] == API_VERSION
    assert cli.cmd_stripe_webhook(stripe_settings.model_copy(update={"stripe_secret_key": None}), url) == 2


def stripe_sdk_version() -> str:
    import stripe as stripe_sdk

    return stripe_sdk.api_version
