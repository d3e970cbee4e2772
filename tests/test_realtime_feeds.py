"""Per-user feeds under the race the chaos run once hit: live events carry a feed past a fill's target."""

from __future__ import annotations

import asyncio
from typing import Any

from server.realtime.feeds import Feeds


async def test_a_fill_overtaken_by_live_events_never_moves_the_feed_back() -> None:
    delivered: list[int] = []
    fetch_started, fetch_may_answer = asyncio.Event(), asyncio.Event()
    outbox = {n: ("credits.updated", {"event_id": n}) for n in range(1, 20)}

    async def fetch(user: str, after: int, upto: int | None) -> tuple[int, list[Any]]:
        fetch_started.set()
        await fetch_may_answer.wait()  # the outbox read is slow (PostgreSQL restarting, say)
        events = [(n, *outbox[n]) for n in range(after + 1, (upto or 19) + 1)]
        return 19, events

    async def deliver(user: str, events: list[Any]) -> None:
        delivered.extend(seq for seq, _, _ in events)

    async def behind(seen: dict[str, int]) -> dict[str, int]:
        return {}

    feeds = Feeds(fetch=fetch, deliver=deliver, behind=behind)
    feeds.join("u")
    await feeds.known("u", 4)
    await feeds.offer("u", 7, *outbox[7])  # 5 and 6 were lost with Redis: a fill for 5..7 starts
    await asyncio.wait_for(fetch_started.wait(), 5)
    for n in (5, 6, 7, 8, 9):  # ...and they arrive live after all (a duplicate publish), then more
        await feeds.offer("u", n, *outbox[n])
    assert delivered == [5, 6, 7, 8, 9]
    fetch_may_answer.set()  # the fill's read comes back with 5..7, all delivered already
    await asyncio.wait_for(asyncio.gather(*feeds.tasks), 5)  # the fill has ended
    assert feeds.feeds["u"].seq == 9 and not feeds.feeds["u"].filling
    await feeds.offer("u", 10, *outbox[10])
    await asyncio.wait_for(asyncio.gather(*feeds.tasks), 5)  # and any fill it started
    assert delivered == [5, 6, 7, 8, 9, 10]  # nothing twice, nothing out of order
    await feeds.close()
