"""Connect-time reads of many sockets in one query: the user, the signed-out check, the newest
event id and a resume's backlog, so a reconnect storm needs a few pooled connections, not one per socket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from server.auth import revoked_sessions
from server.auth.current_user import CurrentUser, user_from_row
from server.auth.tokens import AccessClaims
from server.config import Settings
from server.errors import TokenRevoked
from server.realtime.outbox import NEWEST, REPLAY_PAGE, Sequenced

log = logging.getLogger(__name__)
BATCH = 500  # sockets per query
QUERIES = 2  # batches in flight at once: the rest of the pool stays for REST and /health

# The users' columns of current_user._BY_ID, their newest event id, and for a resume the first
# page of events after its last_event_id (read in the same snapshot as the newest id).
_ADMIT = """
SELECT q.ord, u.id, u.email, u.display_name, u.email_verified, u.token_version, u.created_at,
       u.is_active, COALESCE(c.event_seq, 0) AS latest, e.seq, e.name, e.payload
FROM unnest($1::uuid[], $2::bigint[]) WITH ORDINALITY AS q(id, after, ord)
JOIN users u ON u.id = q.id
LEFT JOIN user_credits c ON c.user_id = q.id
LEFT JOIN LATERAL (
    SELECT seq, name, payload FROM user_events
    WHERE user_id = q.id AND seq > q.after ORDER BY seq LIMIT $3
) e ON true
ORDER BY q.ord, e.seq
"""


@dataclass(slots=True)
class Admission:
    user: CurrentUser
    latest: int  # the user's newest event id when read: later ones are live
    backlog: list[Sequenced]  # events after the resume's last_event_id, at most a page
    more: bool  # the backlog stopped at a full page short of `latest`


class Admissions:
    """Coalesces sockets' connect-time reads: whoever arrives while a batch is in flight joins
    the next; at most QUERIES batches run at once, so a storm queues here, not on the pool."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], redis: Callable[[], Redis], settings: Settings,
                 *, batch: int = BATCH, queries: int = QUERIES) -> None:
        self.pool, self.redis, self.settings = pool, redis, settings
        self.batch, self.queries = batch, queries
        self.waiting: list[tuple[AccessClaims, int | None, asyncio.Future[Admission]]] = []
        self.running = 0
        self.tasks: set[asyncio.Task] = set()

    async def admit(self, claims: AccessClaims, after: int | None) -> Admission:
        """The user behind `claims` if active and signed in (raises the REST errors otherwise)."""
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        self.waiting.append((claims, after, future))
        if self.running < self.queries:
            self.running += 1
            task = asyncio.create_task(self._drain())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self.waiting:
                batch, self.waiting = self.waiting[:self.batch], self.waiting[self.batch:]
                try:
                    await self._read(batch)
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
        finally:
            self.running -= 1

    async def _read(self, batch: list[tuple[AccessClaims, int | None, asyncio.Future[Admission]]]) -> None:
        pool = self.pool()
        revoked = await revoked_sessions.revoked_among(
            self.redis(), self.settings, pool, (claims.session_id for claims, _, _ in batch))
        async with pool.acquire() as conn:
            rows = await conn.fetch(_ADMIT, [c.user_id for c, _, _ in batch],
                                    [NEWEST if after is None else after for _, after, _ in batch], REPLAY_PAGE)
        found: dict[int, list[Any]] = {}
        for row in rows:
            found.setdefault(row["ord"], []).append(row)
        for ord_, (claims, _, future) in enumerate(batch, start=1):
            if future.done():  # the socket went away meanwhile
                continue
            mine = found.get(ord_)
            try:
                user = user_from_row(mine[0] if mine else None, token_version=claims.token_version,
                                     session_id=claims.session_id)
                if claims.session_id in revoked:
                    raise TokenRevoked("This session has been signed out; sign in again")
            except Exception as exc:
                future.set_exception(exc)
                continue
            assert mine is not None
            latest = mine[0]["latest"]
            backlog = [(r["seq"], r["name"], {**orjson.loads(r["payload"]), "event_id": r["seq"]})
                       for r in mine if r["seq"] is not None]
            more = len(backlog) == REPLAY_PAGE and backlog[-1][0] < latest
            future.set_result(Admission(user, latest, backlog, more))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

