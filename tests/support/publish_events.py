"""Run as a separate process: commit N durable events for a user through Resources, like a job does."""

from __future__ import annotations

import asyncio
import sys
import uuid

from db.session import transaction
from server.config import Settings
from server.realtime import outbox
from server.realtime.events import CreditsUpdated
from server.resources import open_resources


async def main(user_id: str, count: int) -> None:
    user = uuid.UUID(user_id)
    async with open_resources(Settings()) as resources:
        for n in range(count):
            async with transaction(resources.sessionmaker) as session:
                outbox.emit(session, user, CreditsUpdated(
                    balance=100 + n, delta=1, reason=f"from another process #{n}",
                    transaction_id=uuid.uuid4()))
            print(session.info["outbox_latest"][user], flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
