"""The per-plan cap on generations queued or in progress: a clear 429 that charges nothing,
the same over REST and the socket, shown in the plans and limits, and not passable by
requests sent together."""

from __future__ import annotations

import asyncio
import uuid

from db.session import transaction
from server import keys
from server.billing.plans import ACTIVE_GENERATION_LIMITS
from server.credits import ledger
from tests.support.api import Api, User, verified_user
from tests.support.flows import balance
from tests.support.sockets import SocketClient
from tests.support.workers import running_worker

IMAGE = "/api/content/generate/image"


async def _user_with_credits(api: Api, app_server, settings, credits: int) -> User:
    async with running_worker(settings):  # sends the verification email
        user = await verified_user(api, settings.data_dir / "outbox")
    if credits:
        async with transaction(app_server.app[keys.resources].sessionmaker) as session:
            await ledger.grant(session, user_id=uuid.UUID(user.id), amount=credits, key=f"test:{user.id}")
    return user


async def _spends(api: Api, user: User) -> int:
    items = (await api.get("/api/credits/transactions?limit=100", token=user.access_token)).body["items"]
    return sum(1 for t in items if t["type"] == "spend")


async def test_the_free_plans_cap_is_a_429_that_charges_nothing_over_rest_and_the_socket(
        api: Api, app_server, settings) -> None:
    user = await _user_with_credits(api, app_server, settings, 100)
    cap = ACTIVE_GENERATION_LIMITS["free"]
    queued = []
    for i in range(cap):  # no worker runs: they all stay queued
        reply = await api.post(IMAGE, token=user.access_token, json={"prompt": f"queued {i}"})
        assert reply.status == 202, reply
        queued.append(reply.body["id"])
    before = await balance(api, user)

    refused = await api.post(IMAGE, token=user.access_token, json={"prompt": "one too many"},
                             headers={"Idempotency-Key": "over-the-cap"})
    assert refused.status == 429
    assert refused.body["error"] == "too_many_active_generations"
    assert f"{cap} generations queued or in progress" in refused.body["message"]
    assert refused.body["details"] == [{"active": cap, "limit": cap, "plan_id": "free", "retry_after": 5}]
    assert refused.headers["Retry-After"] == "5"
    video = await api.post("/api/content/generate/video", token=user.access_token, json={"prompt": "a video"})
    assert video.status == 429 and video.body["error"] == "too_many_active_generations"

    client = SocketClient()
    await client.connect(api.base_url, token=user.access_token)
    try:
        ack = await client.call("content.generate", {"kind": "image", "prompt": "over the socket"})
    finally:
        await client.close()
    assert ack["ok"] is False and ack["error"]["error"] == "too_many_active_generations"
    assert ack["error"]["details"][0]["limit"] == cap

    assert await balance(api, user) == before and await _spends(api, user) == cap
    assert (await api.get("/api/content", token=user.access_token)).body["total"] == cap
    limits = (await api.get("/api/dashboard/limits", token=user.access_token)).body
    assert limits["generations"] == {"active": cap, "limit": cap, "remaining": 0}
    assert (await api.get("/api/dashboard", token=user.access_token)).body["limits"]["generations"]["active"] == cap

    # A finished (here: canceled) generation frees its place; a 429 was not stored under its key.
    canceled = await api.post(f"/api/content/{queued[0]}/cancel", token=user.access_token)
    assert canceled.status == 200
    again = await api.post(IMAGE, token=user.access_token, json={"prompt": "one too many"},
                           headers={"Idempotency-Key": "over-the-cap"})
    assert again.status == 202, again
    # A retry makes a generation active again, so it counts too.
    retried = await api.post(f"/api/content/{queued[0]}/retry", token=user.access_token)
    assert retried.status == 429 and retried.body["error"] == "too_many_active_generations"
    assert (await api.get(f"/api/content/{queued[0]}", token=user.access_token)).body["status"] == "canceled"


async def test_the_cap_follows_the_plan_and_the_plans_show_it(api: Api, app_server, settings) -> None:
    plans = {p["id"]: p for p in (await api.get("/api/subscriptions/plans")).body["items"]}
    for plan_id, cap in ACTIVE_GENERATION_LIMITS.items():
        assert f"{cap} generations at once" in plans[plan_id]["features"]
    assert ACTIVE_GENERATION_LIMITS["starter"] > ACTIVE_GENERATION_LIMITS["free"]

    user = await _user_with_credits(api, app_server, settings, 0)
    subscribed = await api.post("/api/subscriptions", json={"plan_id": "starter"}, token=user.access_token)
    assert subscribed.status == 201, subscribed  # local billing: active at once, 100 credits
    cap = ACTIVE_GENERATION_LIMITS["starter"]
    replies = [await api.post(IMAGE, token=user.access_token, json={"prompt": f"p{i}"}) for i in range(cap + 1)]
    assert [r.status for r in replies] == [202] * cap + [429]
    assert replies[-1].body["details"][0] == {"active": cap, "limit": cap, "plan_id": "starter", "retry_after": 5}
    limits = (await api.get("/api/dashboard/limits", token=user.access_token)).body
    assert limits["generations"] == {"active": cap, "limit": cap, "remaining": 0}


async def test_requests_sent_together_cannot_pass_the_cap(api: Api, app_server, settings) -> None:
    user = await _user_with_credits(api, app_server, settings, 500)
    cap = ACTIVE_GENERATION_LIMITS["free"]
    before = await balance(api, user)
    client = SocketClient()
    await client.connect(api.base_url, token=user.access_token)
    try:
        rest = [api.post(IMAGE, token=user.access_token, json={"prompt": f"rest {i}"}) for i in range(12)]
        socket = [client.call("content.generate", {"kind": "image", "prompt": f"socket {i}"}, timeout=30)
                  for i in range(8)]
        replies = await asyncio.gather(*rest, *socket)
    finally:
        await client.close()
    accepted = [r for r in replies[:12] if r.status == 202] + [a for a in replies[12:] if a["ok"]]
    refused = ([r.body["error"] for r in replies[:12] if r.status != 202]
               + [a["error"]["error"] for a in replies[12:] if not a["ok"]])
    assert len(accepted) == cap, replies
    assert refused == ["too_many_active_generations"] * (20 - cap)
    assert await _spends(api, user) == cap and await balance(api, user) == before - 5 * cap
    assert (await api.get("/api/content", token=user.access_token)).body["total"] == cap
