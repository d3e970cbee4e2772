"""Shared resources built once per process (server or worker) and closed on exit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from db.reader import open_reader
from db.session import make_engine, make_sessionmaker
from server.adapters.ai import AIProvider, make_ai
from server.adapters.billing import BillingGateway, make_billing
from server.adapters.email import Mailer, make_mailer
from server.adapters.storage import Storage, make_storage
from server.config import Settings
from server.moderation import Moderator, make_moderator
from server.ratelimit import RateLimiter
from server.realtime.publisher import Publisher


@dataclass
class Resources:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    reader: asyncpg.Pool  # hot reads: Core statements run raw (db/reader.py)
    redis: Redis
    queue: ArqRedis
    rate_limiter: RateLimiter
    publisher: Publisher
    mailer: Mailer
    ai: AIProvider
    moderator: Moderator  # every text bound for a model is screened through it
    storage: Storage
    billing: BillingGateway


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_redis(settings: Settings) -> Redis:
    # Short timeouts: a dead Redis must surface as a 503 in seconds, not hang requests.
    return Redis.from_url(
        settings.redis_dsn,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        retry_on_timeout=False,
    )


@asynccontextmanager
async def open_resources(settings: Settings, *, metrics: object = None) -> AsyncIterator[Resources]:
    async with AsyncExitStack() as stack:
        engine = make_engine(settings.sqlalchemy_url, pool_size=settings.db_pool_size)
        stack.push_async_callback(engine.dispose)
        reader = await open_reader(settings.sqlalchemy_url, size=settings.db_pool_size)
        stack.push_async_callback(reader.close)
        redis = make_redis(settings)
        stack.push_async_callback(redis.aclose)
        queue = ArqRedis(connection_pool=redis.connection_pool, default_queue_name=settings.key("queue"))
        # Every process publishes through Redis; servers' Socket.IO managers deliver to sockets.
        publisher = Publisher(redis, settings, metrics)
        ai = make_ai(settings)
        stack.push_async_callback(ai.aclose)
        # In the background: a missing model is logged and shown in /health, never a failed start.
        model_check = asyncio.create_task(ai.check_models(), name="ai-model-check")
        stack.push_async_callback(_stop, model_check)
        moderator = make_moderator(settings)
        stack.push_async_callback(moderator.aclose)
        storage = make_storage(settings)
        stack.push_async_callback(storage.aclose)
        billing = make_billing(settings)
        stack.push_async_callback(billing.close)
        yield Resources(
            settings=settings,
            engine=engine,
            sessionmaker=make_sessionmaker(engine, info={"publisher": publisher}),
            reader=reader,
            redis=redis,
            queue=queue,
            rate_limiter=RateLimiter(redis, settings),
            publisher=publisher,
            mailer=make_mailer(settings),
            ai=ai,
            moderator=moderator,
            storage=storage,
            billing=billing,
        )

