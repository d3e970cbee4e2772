"""Durable events in tests: written through the real outbox, read back from it."""

from __future__ import annotations

import uuid
from typing import Any

from db.session import transaction
from server.realtime import outbox
from server.realtime.events import CreditsUpdated, Event
from server.resources import Resources


def credits_event(n: int) -> CreditsUpdated:
    return CreditsUpdated(balance=n, delta=1, reason=f"test #{n}", transaction_id=uuid.uuid4())


async def emit_events(res: Resources, user_id: str | uuid.UUID, events: list[Event]) -> list[int]:
    """Commit the events in one transaction, as a service would; their event ids."""
    user = uuid.UUID(str(user_id))
    async with transaction(res.sessionmaker) as session:
        for event in events:
            outbox.emit(session, user, event)
    last = session.info["outbox_latest"][user]
    return list(range(last - len(events) + 1, last + 1))


async def history(res: Resources, user_id: str | uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    """Every durable event recorded for the user, oldest first."""
    async with res.reader.acquire() as reader:
        _, events = await outbox.replay(reader, user_id=user_id, after=0)
    return [(name, payload) for _, name, payload in events]
