"""Dashboard: overview, quick stats, limits and activity from real flows; analytics over
100 days of data, with day boundaries in the user's time zone."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from tests.conftest import _asyncpg_dsn
from tests.support.api import Api, verified_user
from tests.support.flows import wait_for_content


async def test_overview_quick_stats_limits_and_activity(api: Api, worker, settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    made = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "a dashboard cat"})
    await wait_for_content(api, user, made.body["id"])

    board = await api.get("/api/dashboard", token=user.access_token)
    assert board.status == 200
    body = board.body
    assert body["user"]["id"] == user.id and body["credits"]["balance"] == 20
    assert body["plan"]["id"] == "free" and body["subscription"] is None
    assert body["counts"] == {"avatars": 0, "images": 1, "videos": 0, "in_progress": 0, "failed": 0}
    assert [c["id"] for c in body["recent_content"]] == [made.body["id"]]
    assert body["recent_content"][0]["url"]
    types = [a["type"] for a in body["recent_activity"]]
    assert types[0] == "content.completed" and "account.created" in types
    assert body["limits"]["avatars"] == {"used": 0, "limit": 1, "remaining": 1}

    quick = await api.get("/api/dashboard/quick-stats", token=user.access_token)
    assert quick.body == {"balance": 20, "avatars": 0, "images": 1, "videos": 0, "in_progress": 0,
                          "unverified": False}

    feed = await api.get("/api/dashboard/activity?limit=2", token=user.access_token)
    assert feed.body["limit"] == 2 and len(feed.body["items"]) == 2 and feed.body["total"] >= 6
    assert feed.body["items"][0]["type"] == "content.completed"
    page2 = await api.get("/api/dashboard/activity?limit=2&page=2", token=user.access_token)
    assert {i["id"] for i in page2.body["items"]}.isdisjoint({i["id"] for i in feed.body["items"]})
    assert (await api.get("/api/dashboard/activity?limit=101", token=user.access_token)).status == 400

    limits = await api.get("/api/dashboard/limits", token=user.access_token)
    codes = {w["code"] for w in limits.body["warnings"]}
    assert codes == {"avatar_limit_near"}  # 20 credits is not low; the free plan allows one avatar


async def test_limits_warn_unverified_and_low_credits(api: Api, worker, settings) -> None:
    user = await api.register()
    limits = await api.get("/api/dashboard/limits", token=user.access_token)
    codes = {w["code"] for w in limits.body["warnings"]}
    assert "email_unverified" in codes and "low_credits" not in codes
    verified = await verified_user(api, settings.data_dir / "outbox")
    for i in range(3):  # 25 -> 10 credits
        made = await api.post("/api/content/generate/image", token=verified.access_token, json={"prompt": f"p{i}"})
        await wait_for_content(api, verified, made.body["id"])
    codes = {w["code"] for w in (await api.get("/api/dashboard/limits", token=verified.access_token)).body["warnings"]}
    assert "low_credits" not in codes
    made = await api.post("/api/content/generate/image", token=verified.access_token, json={"prompt": "p4"})
    await wait_for_content(api, verified, made.body["id"])
    codes = {w["code"] for w in (await api.get("/api/dashboard/limits", token=verified.access_token)).body["warnings"]}
    assert "low_credits" in codes  # 5 left


async def _seed_history(database_url: str, user_id: str, items: list[tuple[datetime, str, str]]) -> None:
    """Backdated content and matching ledger rows (balance kept equal to the ledger)."""
    conn = await asyncpg.connect(_asyncpg_dsn(database_url))
    uid = uuid.UUID(user_id)
    try:
        async with conn.transaction():
            grant = 5 * len(items)
            await conn.execute(
                "INSERT INTO credit_transactions (user_id, amount, balance_after, type, idempotency_key, created_at) "
                "VALUES ($1, $2, $2, 'grant', $3, now() - interval '200 days')", uid, grant, f"seed:{uid}")
            for when, kind, status in items:
                cid = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO generated_content (id, user_id, type, status, prompt, credits_cost, created_at, updated_at) "
                    "VALUES ($1, $2, $3, $4, 'seeded', 5, $5, $5)", cid, uid, kind, status, when)
                await conn.execute(
                    "INSERT INTO credit_transactions (user_id, amount, balance_after, type, idempotency_key, created_at) "
                    "VALUES ($1, -5, 0, 'spend', $2, $3)", uid, f"content:{cid}:charge", when)
    finally:
        await conn.close()


def _expected(items, tz: str, days: int) -> dict[date, Counter]:
    zone = ZoneInfo(tz)
    today = datetime.now(UTC).astimezone(zone).date()
    first = today - timedelta(days=days - 1)
    buckets: dict[date, Counter] = {first + timedelta(days=i): Counter() for i in range(days)}
    for when, kind, status in items:
        day = when.astimezone(zone).date()
        if day < first or day > today:
            continue
        buckets[day]["credits_spent"] += 5
        if status == "completed":
            buckets[day]["images" if kind == "image" else "videos"] += 1
        if status == "failed":
            buckets[day]["failed"] += 1
    return buckets


async def test_analytics_over_100_days_with_time_zone_boundaries(api: Api, settings, database_url) -> None:
    user = await api.register()
    today = datetime.now(UTC).date()
    items: list[tuple[datetime, str, str]] = []
    for back in range(0, 100, 2):  # every other day, so odd days must come back as zeros
        noon = datetime.combine(today - timedelta(days=back), time(12, 0), UTC)
        items.append((noon, "image", "completed"))
        if back % 10 == 0:
            items.append((noon + timedelta(minutes=5), "video", "failed"))
    # 00:30 UTC is still the previous evening in Los Angeles: a day boundary case.
    items.append((datetime.combine(today - timedelta(days=3), time(0, 30), UTC), "video", "completed"))
    items.append((datetime.combine(today - timedelta(days=95), time(23, 59), UTC), "image", "completed"))
    await _seed_history(database_url, user.id, items)

    for timeframe, days in (("7d", 7), ("30d", 30), ("90d", 90)):
        for tz in ("UTC", "America/Los_Angeles", "Asia/Tokyo"):
            reply = await api.get(f"/api/dashboard/analytics?timeframe={timeframe}&tz={tz}", token=user.access_token)
            assert reply.status == 200, reply
            series = reply.body["series"]
            expected = _expected(items, tz, days)
            assert [row["date"] for row in series] == [d.isoformat() for d in expected], (timeframe, tz)
            for row in series:
                want = expected[date.fromisoformat(row["date"])]
                got = {k: row[k] for k in ("credits_spent", "images", "videos", "failed")}
                assert got == {k: want[k] for k in got}, (timeframe, tz, row)
            totals = reply.body["totals"]
            assert totals["images"] == sum(c["images"] for c in expected.values())
            assert totals["credits_spent"] == sum(c["credits_spent"] for c in expected.values())
            assert reply.body["timezone"] == tz
    utc_day = (await api.get("/api/dashboard/analytics?timeframe=7d&tz=UTC", token=user.access_token)).body
    la_day = (await api.get("/api/dashboard/analytics?timeframe=7d&tz=America/Los_Angeles", token=user.access_token)).body
    boundary = (today - timedelta(days=3)).isoformat()
    assert next(r for r in utc_day["series"] if r["date"] == boundary)["videos"] == 1
    assert all(r["videos"] == 0 for r in la_day["series"] if r["date"] == boundary)

    # The user's own time zone applies when none is given.
    await api.put("/api/auth/profile", token=user.access_token, json={"timezone": "Asia/Tokyo"})
    default = await api.get("/api/dashboard/analytics?timeframe=30d", token=user.access_token)
    assert default.body["timezone"] == "Asia/Tokyo"

    for bad in ("1d", "365d", "", "7D"):
        reply = await api.get(f"/api/dashboard/analytics?timeframe={bad}", token=user.access_token)
        assert reply.status == 400 and reply.body["details"][0]["field"] == "timeframe", bad
    bad_tz = await api.get("/api/dashboard/analytics?timeframe=7d&tz=Mars/Olympus", token=user.access_token)
    assert bad_tz.status == 400 and bad_tz.body["details"][0]["field"] == "tz"
