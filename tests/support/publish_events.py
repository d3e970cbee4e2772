"""Run as a separate process: publish N events to a user through Resources, like a job does."""

from __future__ import annotations

import asyncio
import sys
import uuid

from server.config import Settings
from server.realtime.events import CreditsUpdated
from server.resources import open_resources


async def main(user_id: str, count: int) -> None:
    async with open_resources(Settings()) as resources:
        for n in range(count):
            event_id = await resources.publisher.publish(user_id, CreditsUpdated(
                balance=100 + n, delta=1, reason=f"from another process #{n}",
                transaction_id=uuid.uuid4()))
            print(event_id, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
