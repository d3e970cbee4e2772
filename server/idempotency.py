"""Idempotency-Key (Stripe's semantics): a keyed request's first response, stored with its work."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import delete, func, insert, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import IdempotencyKey as Record
from server.errors import (
    DomainError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    RecordedFailure,
    ValidationFailed,
)
from server.json_io import dumps

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_LENGTH = 255
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:k, 0))")
UNWRAPPED_LOCK_MS = 120_000  # longer than any provider call we make under it


@dataclass(frozen=True)
class Outcome:
    status: int
    body: bytes  # the JSON exactly as first sent; empty for a 204
    replayed: bool


def valid_key(value: Any, *, field: str) -> str:
    """The key as given, if it is 1..255 characters that PostgreSQL can store."""
    ok = isinstance(value, str) and 1 <= len(value) <= MAX_LENGTH and "\x00" not in value
    if ok:
        try:
            value.encode()
        except UnicodeEncodeError:  # a lone surrogate (undecodable header bytes)
            ok = False
    if not ok:
        message = f"must be 1 to {MAX_LENGTH} characters"
        raise ValidationFailed(f"{field} {message}", details=[{"field": field, "message": message}])
    return value


def key_from(request: web.Request) -> str | None:
    """The request's Idempotency-Key, None without one; a bad one is a 400."""
    values = request.headers.getall(HEADER, [])
    if len(values) > 1:
        raise ValidationFailed(f"Send one {HEADER} header",
                               details=[{"field": HEADER, "message": "sent more than once"}])
    return valid_key(values[0], field=HEADER) if values else None


def fingerprint(operation: str, body: BaseModel | None) -> bytes:
    """What makes two requests the same: the operation and the parsed body (key order and
    spelled-out defaults aside), whichever transport carried them."""
    payload = body.model_dump(mode="json") if body is not None else None
    return hashlib.sha256(operation.encode() + b"\n" + orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).digest()


def _recorded(status: int) -> bool:
    # Stripe's rule: a result of the work is kept, 4xx included. 429 asks the client to try
    # again later, so keeping it would make that retry useless; 5xx are no result at all.
    return 400 <= status < 500 and status != 429


async def _record(session: AsyncSession, user_id: uuid.UUID, key: str) -> Any:
    return (await session.execute(select(Record.fingerprint, Record.status, Record.response)
                                  .where(Record.user_id == user_id, Record.key == key))).one_or_none()


def _replay(found: Any, fingerprint: bytes) -> Outcome:
    if found.fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    return Outcome(found.status, found.response, replayed=True)


async def stored(sessionmaker: Any, *, user_id: uuid.UUID, key: str, fingerprint: bytes) -> Outcome | None:
    """The outcome already recorded for this key (422 if for another request), read on a short session."""
    async with sessionmaker() as session:
        found = await _record(session, user_id, key)
    return None if found is None else _replay(found, fingerprint)


async def run(session: AsyncSession, *, user_id: uuid.UUID, key: str, fingerprint: bytes, status: int,
              work: Callable[[], Awaitable[Any]]) -> Outcome:
    """The outcome recorded for this key, or run `work` and record its outcome in this transaction."""
    # "Still running" is a transaction-scoped advisory lock, tried without waiting: it is
    # held exactly as long as the first request's transaction and PostgreSQL drops it when
    # that request's connection dies, so a crash never locks a key out. It never waits, so
    # it takes no part in the lock order. An in-progress row committed ahead would cost a
    # second commit per request and a lease to expire.
    locked = (await session.execute(_TRY_LOCK, {"k": f"idempotency:{user_id}:{key}"})).scalar_one()
    # A statement of its own, so under READ COMMITTED its snapshot follows the lock and sees
    # the record of a first request that committed just before. Should it not, the primary
    # key still refuses a second record, and the work goes with it. Without the lock the
    # key is busy, perhaps only with another replay of a finished request: that replays too.
    found = await _record(session, user_id, key)
    if found is not None:
        return _replay(found, fingerprint)
    if not locked:
        raise IdempotencyKeyInUse()

    hooks = session.info.setdefault("after_commit", [])
    registered = len(hooks)
    pending_events = {user: list(events) for user, events in session.info.get("outbox", {}).items()}
    locked = set(session.info.get("locked_accounts", ()))
    savepoint = await session.begin_nested()  # a refused work is undone, its record kept
    try:
        result = await work()
    except DomainError as exc:
        if not _recorded(exc.status):
            raise
        await savepoint.rollback()
        del hooks[registered:]  # its enqueues and events were undone with it
        if "outbox" in session.info:
            session.info["outbox"] = pending_events
        session.info["locked_accounts"] = locked  # row locks taken in the savepoint are released
        outcome = Outcome(exc.status, dumps(exc.body()), replayed=False)
    else:
        await savepoint.commit()
        if result is None:
            outcome = Outcome(204 if status in (200, 204) else status, b"", replayed=False)
        else:
            # Encoded here, inside the transaction: an answer that cannot be written undoes the work.
            outcome = Outcome(status, dumps(result), replayed=False)
    # The record commits with the work: a crash leaves both or neither, so a retry replays
    # the record or runs the work afresh, never half of it.
    await session.execute(insert(Record).values(user_id=user_id, key=key, fingerprint=fingerprint,
                                                status=outcome.status, response=outcome.body))
    return outcome


async def run_unwrapped(sessionmaker: Any, redis: Any, *, user_id: uuid.UUID, key: str, fingerprint: bytes,
                        status: int, work: Callable[[], Awaitable[Any]]) -> Outcome:
    """For work that keeps its own transactions (it calls a payment provider between them).

    "Still running" is a Redis lock here (no database connection is held through a provider
    call); its TTL frees a key whose request died. The work itself must be safe to repeat
    under the same key (billing derives the provider's idempotency keys from it), because
    a crash after the work and before its record lets a retry run it again.
    """
    lock = f"idempotency-lock:{user_id}:{hashlib.sha256(key.encode()).hexdigest()}"
    if not await redis.set(lock, b"1", nx=True, px=UNWRAPPED_LOCK_MS):
        async with sessionmaker() as session:
            found = await _record(session, user_id, key)
        if found is None:
            raise IdempotencyKeyInUse()
        return _replay(found, fingerprint)
    try:
        async with sessionmaker() as session:
            found = await _record(session, user_id, key)
        if found is not None:
            return _replay(found, fingerprint)
        try:
            result = await work()
        except DomainError as exc:
            if not _recorded(exc.status):
                raise
            outcome = Outcome(exc.status, dumps(exc.body()), replayed=False)
        else:
            body = b"" if result is None else dumps(result)
            outcome = Outcome(status if body else (204 if status in (200, 204) else status), body, replayed=False)
        async with sessionmaker() as session, session.begin():
            await session.execute(pg_insert(Record).values(
                user_id=user_id, key=key, fingerprint=fingerprint, status=outcome.status,
                response=outcome.body).on_conflict_do_nothing())
        return outcome
    finally:
        await redis.delete(lock)


def response(outcome: Outcome) -> web.Response:
    """The HTTP answer of an outcome, marked when it is a replay."""
    headers = {REPLAYED: "true"} if outcome.replayed else None
    if not outcome.body:
        return web.Response(status=outcome.status, headers=headers)
    return web.Response(body=outcome.body, status=outcome.status, content_type="application/json",
                        headers=headers)


def result(outcome: Outcome) -> Any:
    """The outcome as a socket action's result: its data, or its failure raised again."""
    data = orjson.loads(outcome.body) if outcome.body else None
    if outcome.status >= 400:
        raise RecordedFailure(outcome.status, data)
    return data


async def prune(session: AsyncSession, *, older_than: timedelta, limit: int) -> int:
    """Forget up to `limit` keys recorded more than `older_than` ago (database clock); how many."""
    oldest = (select(Record.user_id, Record.key)
              .where(Record.created_at < func.now() - older_than)
              .order_by(Record.created_at).limit(limit))
    deleted = await session.execute(delete(Record).where(tuple_(Record.user_id, Record.key).in_(oldest)))
    return int(deleted.rowcount or 0)
