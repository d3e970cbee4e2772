"""GET /api/credits, /api/credits/transactions and /api/credits/costs over HTTP."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from db.session import transaction
from server.credits import ledger
from server.resources import open_resources
from tests.support.api import Api


async def test_balance_after_signup(api: Api) -> None:
    user = await api.register()
    reply = await api.get("/api/credits", token=user.access_token)
    assert reply.status == 200
    assert reply.body == {"balance": 25, "lifetime_granted": 25, "lifetime_spent": 0}
    assert (await api.get("/api/credits")).status == 401


async def test_transactions_are_paged_newest_first(api: Api, settings) -> None:
    user = await api.register()
    user_id = uuid.UUID(user.id)
    async with open_resources(settings) as res:
        async with transaction(res.sessionmaker) as session:  # several movements in one transaction
            for i in range(6):
                await ledger.spend(session, user_id=user_id, amount=i + 1, key=f"api:{user_id}:{i}",
                                   reason=f"image {i}", reference_id=f"content-{i}")
        async with transaction(res.sessionmaker) as session:
            await ledger.refund(session, user_id=user_id, charge_key=f"api:{user_id}:5",
                                key=f"api:{user_id}:5:refund", reason="failed")
    token = user.access_token
    first = await api.get("/api/credits/transactions?page=1&limit=3", token=token)
    assert first.status == 200
    assert (first.body["total"], first.body["page"], first.body["limit"]) == (8, 1, 3)
    items = first.body["items"]
    assert [i["type"] for i in items] == ["refund", "spend", "spend"]
    assert [i["amount"] for i in items] == [6, -6, -5]
    assert [i["balance_after"] for i in items] == [10, 4, 10]
    assert set(items[0]) == {"id", "amount", "balance_after", "type", "reason", "reference_id", "created_at"}
    assert items[0]["reference_id"] == "content-5" and items[0]["created_at"].endswith("Z")
    rest = []
    for page in (2, 3):
        rest += (await api.get(f"/api/credits/transactions?page={page}&limit=3", token=token)).body["items"]
    assert [i["amount"] for i in rest] == [-4, -3, -2, -1, 25]
    beyond = await api.get("/api/credits/transactions?page=9&limit=3", token=token)
    assert beyond.body["items"] == [] and beyond.body["total"] == 8
    spends = await api.get("/api/credits/transactions?type=spend&limit=100", token=token)
    assert spends.body["total"] == 6
    credits = await api.get("/api/credits", token=token)
    assert credits.body == {"balance": 10, "lifetime_granted": 25, "lifetime_spent": 15}

    for bad in ("limit=0", "limit=101", "page=0", "type=theft", "limit=abc"):
        reply = await api.get(f"/api/credits/transactions?{bad}", token=token)
        assert (reply.status, reply.body["error"]) == (400, "validation_error"), bad


async def test_transactions_are_private(api: Api, settings) -> None:
    alice, bob = await api.register(), await api.register()
    async with open_resources(settings) as res:  # purchases need a verified email
        async with transaction(res.sessionmaker) as session:
            await session.execute(text("UPDATE users SET email_verified = true WHERE id = :id"),
                                  {"id": uuid.UUID(alice.id)})
    bought = await api.post("/api/subscriptions/payment-intent", json={"pack_id": "credits_100"},
                            token=alice.access_token)
    assert bought.status == 201, bought
    bobs = await api.get("/api/credits/transactions", token=bob.access_token)
    assert bobs.body["total"] == 1 and bobs.body["items"][0]["amount"] == 25


async def test_costs_table(api: Api) -> None:
    user = await api.register()
    reply = await api.get("/api/credits/costs", token=user.access_token)
    assert reply.status == 200
    assert reply.body["base"] == {"image": 5, "video": 15, "avatar": 10, "avatar_thumbnail": 5}
    assert reply.body["quality_multipliers"] == {"standard": 1.0, "hd": 1.5, "premium": 2.0}
    assert reply.body["examples"]["image"] == {"standard": 5, "hd": 8, "premium": 10}
    assert reply.body["examples"]["video"] == {"standard": 15, "hd": 23, "premium": 30}
