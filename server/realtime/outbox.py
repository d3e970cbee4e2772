"""Durable events: written in the transaction of the change they announce, numbered per user
from `user_credits.event_seq` (gapless, in commit order), read back for replay and catch-up."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from db.session import after_commit, before_commit
from server.realtime.events import Event

HISTORY_DAYS = 30
HISTORY_EVENTS = 10_000
REPLAY_PAGE = 1000
NEWEST = 2 ** 62  # "after" for a read that only wants the newest event_id

Sequenced = tuple[int, str, dict[str, Any]]  # (event_id, event name, payload with event_id and ts)

_APPEND = text("""
WITH bumped AS (
    UPDATE user_credits SET event_seq = event_seq + CAST(:n AS bigint)
    WHERE user_id = :user_id RETURNING event_seq
)
INSERT INTO user_events (user_id, seq, name, payload)
SELECT CAST(:user_id AS uuid), bumped.event_seq - CAST(:n AS bigint) + e.ord, e.item ->> 0, e.item -> 1
FROM bumped, jsonb_array_elements(CAST(:events AS jsonb)) WITH ORDINALITY AS e(item, ord)
RETURNING seq
""")
_OPEN_ACCOUNT = text("INSERT INTO user_credits (user_id) VALUES (:user_id) ON CONFLICT DO NOTHING")

# The user's newest event id and the events after `after`, in one round trip.
_SINCE = """
SELECT c.event_seq AS latest, e.seq, e.name, e.payload
FROM user_credits c
LEFT JOIN LATERAL (
    SELECT seq, name, payload FROM user_events
    WHERE user_id = c.user_id AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4
) e ON true
WHERE c.user_id = $1
"""
_PRUNE = text("""
DELETE FROM user_events e USING user_credits c
WHERE e.user_id = c.user_id AND e.created_at < now() - make_interval(days => :days)
  AND e.seq <= c.event_seq - :keep
""")


def now_ts() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def emit(session: AsyncSession, user_id: uuid.UUID, event: Event) -> None:
    """Record `event` for the user in this transaction; it is numbered and sent on commit."""
    pending: dict[uuid.UUID, list[tuple[str, dict[str, Any]]]] | None = session.info.get("outbox")
    if pending is None:
        pending = session.info["outbox"] = {}
        before_commit(session, "outbox", _append)
    payload = event.model_dump(mode="json")
    payload["ts"] = now_ts()
    pending.setdefault(user_id, []).append((event.name, payload))


def emit_ephemeral(session: AsyncSession, user_id: uuid.UUID, event: Event, *,
                   latest: int | None = None) -> None:
    """Send a progress tick after commit: not stored, carries the user's latest event_id
    (by default the last one this transaction wrote)."""
    publisher = session.info.get("publisher")
    if publisher is None:
        return

    async def send() -> None:
        newest = latest if latest is not None else session.info.get("outbox_latest", {}).get(user_id, 0)
        await publisher.publish_progress(user_id, event, latest=newest)

    after_commit(session, send)


async def _append(session: AsyncSession) -> None:
    # Without a publisher (a bare session) the events still reach sockets: servers fill
    # holes from this table (server/realtime/feeds.py); publishing is the fast path.
    publisher = session.info.get("publisher")
    for user_id, events in session.info.pop("outbox", {}).items():
        params = {"user_id": user_id, "n": len(events), "events": orjson.dumps(events).decode()}
        seqs = (await session.execute(_APPEND, params)).scalars().all()
        if not seqs:  # no account row yet (cannot happen for a registered user): open it
            await session.execute(_OPEN_ACCOUNT, {"user_id": user_id})
            seqs = (await session.execute(_APPEND, params)).scalars().all()
        numbered = [(seq, name, {**payload, "event_id": seq})
                    for seq, (name, payload) in zip(sorted(seqs), events, strict=True)]
        session.info.setdefault("outbox_latest", {})[user_id] = numbered[-1][0]
        if publisher is not None:
            after_commit(session, _publisher_call(publisher, user_id, numbered))


def _publisher_call(publisher: Any, user_id: uuid.UUID, events: list[Sequenced]) -> Any:
    return lambda: publisher.publish_durable(user_id, events)


async def read_since(
    conn: asyncpg.Connection, *, user_id: uuid.UUID | str, after: int, upto: int | None = None,
    limit: int = REPLAY_PAGE,
) -> tuple[int, list[Sequenced]]:
    """(the user's newest event id, the events in (after, upto] oldest first, at most `limit`)."""
    rows = await conn.fetch(_SINCE, _uuid(user_id), after, upto if upto is not None else NEWEST, limit)
    latest = rows[0]["latest"] if rows else 0
    events = [(r["seq"], r["name"], {**orjson.loads(r["payload"]), "event_id": r["seq"]})
              for r in rows if r["seq"] is not None]
    return latest, events


async def replay(
    conn: asyncpg.Connection, *, user_id: uuid.UUID | str, after: int
) -> tuple[int, list[Sequenced]]:
    """Every event after `after` (all pages), and the newest id read."""
    latest, events = await read_since(conn, user_id=user_id, after=after)
    while len(events) and len(events) % REPLAY_PAGE == 0 and events[-1][0] < latest:
        _, more = await read_since(conn, user_id=user_id, after=events[-1][0])
        if not more:
            break
        events.extend(more)
    return max(latest, events[-1][0] if events else 0), events


def parse_event_id(value: Any) -> int | None:
    """A client's last_event_id: a non-negative integer (a digit string is accepted too)."""
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < NEWEST:
        raise ValueError("last_event_id must be a non-negative integer")
    return value


async def prune(session: AsyncSession) -> int:
    """Drop events both older than HISTORY_DAYS and beyond the newest HISTORY_EVENTS of their user."""
    result = await session.execute(_PRUNE, {"days": HISTORY_DAYS, "keep": HISTORY_EVENTS})
    return result.rowcount or 0


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
