"""Per-user delivery on one server: every durable event reaches the user's room once and in order,
holes filled from the outbox, a catch-up for feeds whose last event never came."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from server.realtime.outbox import Sequenced

log = logging.getLogger(__name__)

Fetch = Callable[[str, int, int | None], Awaitable[tuple[int, list[Sequenced]]]]
Deliver = Callable[[str, list[Sequenced]], Awaitable[None]]
Behind = Callable[[dict[str, int]], Awaitable[dict[str, int]]]
FILL_RETRY_SECONDS = 0.25
FILL_GIVE_UP_SECONDS = 3.0  # PostgreSQL unreachable this long: deliver what arrived, hole and all
CATCH_UP_SLICE = 1000  # feeds per catch-up query


class Feed:
    __slots__ = ("seq", "pending", "filling", "sockets")

    def __init__(self) -> None:
        self.seq: int | None = None  # delivered here: every event_id <= seq; None until known
        self.pending: dict[int, tuple[str, dict[str, Any]]] = {}
        self.filling = False
        self.sockets = 0


class Feeds:
    def __init__(self, *, fetch: Fetch, deliver: Deliver, behind: Behind) -> None:
        self.fetch = fetch  # (user, after, upto) -> (latest, events) from the outbox
        self.deliver = deliver  # send to the user's room here, in order
        self.behind = behind  # {user: seq} -> {user: latest} for users whose latest > seq
        self.feeds: dict[str, Feed] = {}
        self.tasks: set[asyncio.Task] = set()

    def join(self, user: str) -> None:
        """A socket of the user joined here; events are buffered until `known` sets the start."""
        feed = self.feeds.get(user)
        if feed is None:
            feed = self.feeds[user] = Feed()
        feed.sockets += 1

    def leave(self, user: str) -> None:
        feed = self.feeds.get(user)
        if feed is not None:
            feed.sockets -= 1
            if feed.sockets <= 0:
                del self.feeds[user]

    async def known(self, user: str, latest: int) -> None:
        """The user's newest event_id as read after joining: everything up to it is history."""
        feed = self.feeds.get(user)
        if feed is None or feed.seq is not None:
            return
        feed.seq = latest
        for seq in [s for s in feed.pending if s <= latest]:
            del feed.pending[seq]
        await self._drain(user, feed)

    async def offer(self, user: str, seq: int, name: str, payload: dict[str, Any]) -> None:
        """A durable event arrived from Redis."""
        feed = self.feeds.get(user)
        if feed is None or (feed.seq is not None and seq <= feed.seq):
            return  # nobody here, or delivered already
        if feed.seq is not None and seq == feed.seq + 1 and not feed.filling and not feed.pending:
            feed.seq = seq
            await self.deliver(user, [(seq, name, payload)])
            return
        feed.pending[seq] = (name, payload)
        if feed.seq is not None:
            await self._drain(user, feed)

    async def _drain(self, user: str, feed: Feed) -> None:
        """Deliver what continues the feed; start a fill if a hole is left."""
        ready: list[Sequenced] = []
        assert feed.seq is not None
        while feed.seq + 1 in feed.pending:
            feed.seq += 1
            name, payload = feed.pending.pop(feed.seq)
            ready.append((feed.seq, name, payload))
        if ready:
            await self.deliver(user, ready)
        if feed.pending and not feed.filling:
            self._spawn(user, feed, max(feed.pending))

    def _spawn(self, user: str, feed: Feed, target: int) -> None:
        feed.filling = True
        task = asyncio.create_task(self._fill(user, feed, target))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _fill(self, user: str, feed: Feed, target: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while feed.seq is not None and feed.seq < target and self.feeds.get(user) is feed:
                try:
                    _, events = await self.fetch(user, feed.seq, target)
                except Exception as exc:
                    if loop.time() - started > FILL_GIVE_UP_SECONDS:
                        log.warning("outbox unreachable for %s (%r); delivering past the hole", user, exc)
                        feed.seq = max(feed.seq, min(feed.pending) - 1 if feed.pending else target)
                        break
                    await asyncio.sleep(FILL_RETRY_SECONDS)
                    continue
                events = [e for e in events if e[0] > feed.seq]
                if not events:
                    # Never back: live events may have carried the feed past the target meanwhile
                    # (going back re-delivered them, out of order, with the next fill).
                    feed.seq = max(feed.seq, min(feed.pending) - 1 if feed.pending else target)
                    break  # pruned, never there, or delivered live meanwhile
                for seq, _, _ in events:
                    feed.pending.pop(seq, None)
                feed.seq = events[-1][0]
                await self.deliver(user, events)
                target = max(target, max(feed.pending, default=0))
        finally:
            feed.filling = False
        if self.feeds.get(user) is feed and feed.seq is not None:
            await self._drain(user, feed)

    async def catch_up(self) -> int:
        """Read every feed's latest event_id; fill the ones that fell behind. Returns how many."""
        # In slices, each its own query: at 10,000 users one pass in one piece held the event
        # loop for tens of milliseconds every second.
        feeds = list(self.feeds.items())
        count = 0
        for start in range(0, len(feeds), CATCH_UP_SLICE):
            seen = {user: feed.seq for user, feed in feeds[start:start + CATCH_UP_SLICE]
                    if feed.seq is not None and not feed.filling}
            if not seen:
                continue
            latest = await self.behind(seen)
            for user, newest in latest.items():
                feed = self.feeds.get(user)
                if feed is not None and feed.seq is not None and newest > feed.seq and not feed.filling:
                    self._spawn(user, feed, newest)
                    count += 1
        return count

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
