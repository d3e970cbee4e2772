"""Local billing (no Stripe key) over HTTP: subscribe, change, cancel, reactivate and packs take
effect at once through the same internal paths as Stripe's webhooks."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from pydantic import ValidationError

from jobs.billing import roll_over_billing_periods
from server.billing.service import credit_packs
from server.config import Settings
from server.resources import open_resources
from tests.conftest import _asyncpg_dsn
from tests.support.api import Api, User


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    yield conn
    await conn.close()


async def buyer(api: Api, db) -> User:
    """A registered user whose email is verified (purchases need it; the email link itself is
    tested in test_auth)."""
    user = await api.register()
    await db.execute("UPDATE users SET email_verified = true WHERE id = $1", uuid.UUID(user.id))
    return user


async def _credits(api: Api, token: str) -> dict:
    reply = await api.get("/api/credits", token=token)
    assert reply.status == 200, reply
    return reply.body


async def test_plans_and_packs_are_public(api: Api) -> None:
    plans = await api.get("/api/subscriptions/plans")
    assert plans.status == 200
    assert [(p["id"], p["price_cents"], p["credits_per_period"], p["avatar_limit"])
            for p in plans.body["items"]] == [
        ("free", 0, 25, 1), ("starter", 999, 100, 3), ("pro", 2999, 500, 10),
        ("enterprise", 9999, 2000, 50)]
    assert all("stripe_price_id" not in p for p in plans.body["items"])
    packs = await api.get("/api/subscriptions/packs")
    assert packs.status == 200
    assert {"id": "credits_100", "credits": 100, "price_cents": 999, "currency": "usd"} in packs.body["items"]
    assert (await api.get("/api/subscriptions")).status == 401


async def test_local_subscription_lifecycle(api: Api, database_url: str, db) -> None:
    user = await buyer(api, db)
    token = user.access_token
    current = await api.get("/api/subscriptions", token=token)
    assert current.body == {"subscription": None, "plan": current.body["plan"]}
    assert current.body["plan"]["id"] == "free"

    created = await api.post("/api/subscriptions", json={"plan_id": "starter"}, token=token)
    assert created.status == 201, created
    sub = created.body["subscription"]
    assert sub["status"] == "active" and sub["plan_id"] == "starter"
    assert created.body["client_secret"] is None
    assert created.body["plan"]["id"] == "starter"
    assert sub["current_period_start"] < sub["current_period_end"]
    assert await _credits(api, token) == {"balance": 125, "lifetime_granted": 125, "lifetime_spent": 0}
    grant = (await api.get("/api/credits/transactions", token=token)).body["items"][0]
    assert grant["type"] == "grant" and grant["amount"] == 100 and grant["balance_after"] == 125
    assert grant["reference_id"].startswith("local_in_")

    again = await api.post("/api/subscriptions", json={"plan_id": "pro"}, token=token)
    assert again.status == 409 and again.body["error"] == "conflict"

    changed = await api.put(f"/api/subscriptions/{sub['id']}", json={"plan_id": "pro"}, token=token)
    assert changed.status == 200, changed
    assert changed.body["subscription"]["plan_id"] == "pro" and changed.body["plan"]["avatar_limit"] == 10
    assert (await _credits(api, token))["balance"] == 125  # the next paid invoice grants Pro's credits
    profile = await api.get("/api/auth/profile", token=token)
    assert profile.body["plan"]["id"] == "pro"

    canceled = await api.post(f"/api/subscriptions/{sub['id']}/cancel", token=token)
    assert canceled.status == 200
    assert canceled.body["subscription"]["cancel_at_period_end"] is True
    assert canceled.body["subscription"]["status"] == "active"  # paid until the period ends
    assert canceled.body["plan"]["id"] == "pro"
    twice = await api.post(f"/api/subscriptions/{sub['id']}/cancel", token=token)
    assert twice.status == 200 and twice.body["subscription"]["cancel_at_period_end"] is True

    kept = await api.post(f"/api/subscriptions/{sub['id']}/reactivate", token=token)
    assert kept.status == 200 and kept.body["subscription"]["cancel_at_period_end"] is False

    history = await api.get("/api/subscriptions/history", token=token)
    assert history.body["total"] == 1 and history.body["items"][0]["id"] == sub["id"]

    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        kinds = [r["type"] for r in await conn.fetch(
            "SELECT type FROM activity_events WHERE user_id = $1 ORDER BY created_at", uuid.UUID(user.id))]
    finally:
        await conn.close()
    assert kinds[-5:] == ["subscription.activated", "credits.granted", "subscription.plan_changed",
                          "subscription.cancel_scheduled", "subscription.reactivated"]


async def test_local_credit_pack_is_granted_at_once(api: Api, db) -> None:
    user = await buyer(api, db)
    reply = await api.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_500"},
                           token=user.access_token)
    assert reply.status == 201, reply
    assert reply.body["status"] == "succeeded" and reply.body["client_secret"] is None
    assert reply.body["credits"] == 500 and reply.body["amount_cents"] == 3999
    assert await _credits(api, user.access_token) == {
        "balance": 525, "lifetime_granted": 525, "lifetime_spent": 0}
    purchase = (await api.get("/api/credits/transactions?type=purchase", token=user.access_token)).body
    assert purchase["total"] == 1
    assert purchase["items"][0]["reference_id"] == reply.body["payment_intent_id"]


async def test_bad_billing_input_is_refused_and_changes_nothing(api: Api, db) -> None:
    user = await buyer(api, db)
    token = user.access_token
    cases = [
        ("POST", "/api/subscriptions", {"plan_id": "platinum"}, 400, "validation_error"),
        ("POST", "/api/subscriptions", {"plan_id": "free"}, 400, "validation_error"),
        ("POST", "/api/subscriptions", {"plan_id": "pro", "price_cents": 1}, 400, "validation_error"),
        ("POST", "/api/subscriptions", {}, 400, "validation_error"),
        ("POST", "/api/subscriptions/payment-intent", {"pack_id": "credits_1"}, 400, "validation_error"),
        ("POST", "/api/subscriptions/payment-intent", {"pack_id": "credits_100", "credits": 9999}, 400,
         "validation_error"),
        ("PUT", f"/api/subscriptions/{uuid.uuid4()}", {"plan_id": "pro"}, 404, "not_found"),
        ("PUT", "/api/subscriptions/not-a-uuid", {"plan_id": "pro"}, 404, "not_found"),
        ("POST", f"/api/subscriptions/{uuid.uuid4()}/cancel", None, 404, "not_found"),
        ("POST", "/api/subscriptions/nope/reactivate", None, 404, "not_found"),
    ]
    for method, path, body, status, code in cases:
        reply = await api.request(method, path, json=body, token=token)
        assert (reply.status, reply.body["error"]) == (status, code), (method, path, body, reply)
    assert await _credits(api, token) == {"balance": 25, "lifetime_granted": 25, "lifetime_spent": 0}
    assert (await api.get("/api/subscriptions/history", token=token)).body["total"] == 0
    assert (await api.post("/api/subscriptions", json={"plan_id": "pro"})).status == 401


async def test_another_users_subscription_is_not_found(api: Api, db) -> None:
    owner, other = await buyer(api, db), await buyer(api, db)
    sub = (await api.post("/api/subscriptions", json={"plan_id": "starter"},
                          token=owner.access_token)).body["subscription"]
    for method, path, body in [("PUT", f"/api/subscriptions/{sub['id']}", {"plan_id": "pro"}),
                               ("POST", f"/api/subscriptions/{sub['id']}/cancel", None),
                               ("POST", f"/api/subscriptions/{sub['id']}/reactivate", None)]:
        reply = await api.request(method, path, json=body, token=other.access_token)
        assert reply.status == 404, reply
    mine = await api.get("/api/subscriptions", token=owner.access_token)
    assert mine.body["subscription"]["plan_id"] == "starter"
    assert mine.body["subscription"]["cancel_at_period_end"] is False


async def test_local_periods_renew_with_credits_and_end_when_canceled(
        api: Api, settings, database_url, db) -> None:
    user = await buyer(api, db)
    token = user.access_token
    sub = (await api.post("/api/subscriptions", json={"plan_id": "starter"}, token=token)).body["subscription"]
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    try:
        ended = await conn.fetchval(
            "UPDATE user_subscriptions SET current_period_start = now() - interval '31 days', "
            "current_period_end = now() - interval '1 day' WHERE id = $1 RETURNING current_period_end",
            uuid.UUID(sub["id"]))
        async with open_resources(settings) as res:
            assert await roll_over_billing_periods({"res": res}) >= 1
            renewed = (await api.get("/api/subscriptions", token=token)).body["subscription"]
            assert renewed["status"] == "active"
            assert renewed["current_period_start"] == ended.isoformat().replace("+00:00", "Z")
            assert (await _credits(api, token))["balance"] == 225  # 25 + two Starter invoices
            await roll_over_billing_periods({"res": res})  # not due again: no second renewal
            assert (await _credits(api, token))["balance"] == 225

            await api.post(f"/api/subscriptions/{sub['id']}/cancel", token=token)
            await conn.execute("UPDATE user_subscriptions SET current_period_end = now() - interval '1 minute' "
                               "WHERE id = $1", uuid.UUID(sub["id"]))
            await roll_over_billing_periods({"res": res})
    finally:
        await conn.close()
    current = await api.get("/api/subscriptions", token=token)
    assert current.body["subscription"] is None and current.body["plan"]["id"] == "free"
    assert (await _credits(api, token))["balance"] == 225  # ending grants nothing and takes nothing
    history = (await api.get("/api/subscriptions/history", token=token)).body["items"]
    assert [(h["status"], h["cancel_at_period_end"]) for h in history] == [("canceled", True)]
    again = await api.post("/api/subscriptions", json={"plan_id": "pro"}, token=token)
    assert again.status == 201 and again.body["subscription"]["status"] == "active"


async def test_webhooks_are_refused_without_a_webhook_secret(api: Api) -> None:
    body = b'{"id": "evt_1", "type": "invoice.paid", "created": 1, "data": {"object": {}}}'
    reply = await api.post("/api/subscriptions/webhook", data=body,
                           headers={"Stripe-Signature": "t=1,v1=abc", "Content-Type": "application/json"})
    assert (reply.status, reply.body["error"]) == (400, "invalid_signature")
    assert "STRIPE" not in reply.body["message"] and "SECRET" not in reply.body["message"]


async def test_purchases_need_a_verified_email(api: Api, db) -> None:
    user = await api.register()
    token = user.access_token
    for path, body in [("/api/subscriptions", {"plan_id": "pro"}),
                       ("/api/subscriptions/payment-intent", {"pack_id": "credits_100"})]:
        reply = await api.post(path, json=body, token=token)
        assert (reply.status, reply.body["error"]) == (403, "email_not_verified"), (path, reply)
    assert await _credits(api, token) == {"balance": 25, "lifetime_granted": 25, "lifetime_spent": 0}
    assert await db.fetchval("SELECT count(*) FROM billing_operations WHERE user_id = $1",
                             uuid.UUID(user.id)) == 0

    # A subscriber whose email changed (unverified again) cannot buy more, but can still leave.
    await db.execute("UPDATE users SET email_verified = true WHERE id = $1", uuid.UUID(user.id))
    sub = (await api.post("/api/subscriptions", json={"plan_id": "starter"}, token=token)).body["subscription"]
    await db.execute("UPDATE users SET email_verified = false WHERE id = $1", uuid.UUID(user.id))
    upgrade = await api.put(f"/api/subscriptions/{sub['id']}", json={"plan_id": "pro"}, token=token)
    assert (upgrade.status, upgrade.body["error"]) == (403, "email_not_verified")
    left = await api.post(f"/api/subscriptions/{sub['id']}/cancel", token=token)
    assert left.status == 200 and left.body["subscription"]["cancel_at_period_end"] is True


def test_credit_packs_setting_is_validated() -> None:
    packs = credit_packs(Settings(_env_file=None, credit_packs="small:50:499, big:1000:8999"))
    assert [(p.id, p.credits, p.price_cents) for p in packs] == [("small", 50, 499), ("big", 1000, 8999)]
    for bad in ("nope", "a:10", "a:0:999", "a:10:10", "a:10:999,a:20:1999", "a:x:999"):
        with pytest.raises(ValidationError, match="credit pack"):
            Settings(_env_file=None, credit_packs=bad)
