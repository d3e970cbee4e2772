"""Client -> server actions: `@action(name, body=Model)` handlers over the same services as REST,
each answered through the ack (docs/architecture.md, sockets)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from server import idempotency
from server.auth.current_user import CurrentUser
from server.content import service as content_service
from server.content.schemas import GenerateImageIn, GenerateVideoIn
from server.errors import ValidationFailed
from server.json_io import ensure_bounded, parse
from server.realtime import outbox

if TYPE_CHECKING:
    from server.resources import Resources


class Replayer(Protocol):
    """What an action needs of the realtime server (named here so the two modules do not import each other)."""

    async def replay_through_ack(self, sid: str, user_id: Any, last_event_id: int) -> list[Any]: ...


ActionHandler = Callable[["ActionContext", Any], Awaitable[Any]]


@dataclass(frozen=True)
class ActionContext:
    sid: str
    user: CurrentUser  # re-read in the action's transaction when it has one
    resources: Resources
    session: AsyncSession | None  # one transaction around the action (None if it asked for none)
    realtime: Replayer


@dataclass(frozen=True)
class Action:
    name: str
    handler: ActionHandler
    body: type[BaseModel] | None
    transaction: bool


ACTIONS: dict[str, Action] = {}


def action(name: str, *, body: type[BaseModel] | None = None,
           transaction: bool = True) -> Callable[[ActionHandler], ActionHandler]:
    """Register a client -> server action under its API.md event name."""
    def register(handler: ActionHandler) -> ActionHandler:
        ACTIONS[name] = Action(name, handler, body, transaction)
        return handler

    return register


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    last_event_id: Annotated[int, BeforeValidator(outbox.parse_event_id)]


@action("ping", transaction=False)
async def ping(ctx: ActionContext, body: Any) -> dict[str, Any]:
    """Liveness check from the client's side; answers with the server time."""
    return {"pong": True, "ts": time.time()}


@action("events.replay", body=ReplayIn, transaction=False)
async def replay_events(ctx: ActionContext, body: ReplayIn) -> dict[str, Any]:
    """Every event after `last_event_id`, in order; live ones follow the ack, none twice."""
    events = await ctx.realtime.replay_through_ack(ctx.sid, ctx.user.id, body.last_event_id)
    return {"events": [{"event": name, "data": payload} for name, payload in events]}


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content_id: uuid.UUID


@action("content.generate")
async def generate_content(ctx: ActionContext, body: Any) -> dict[str, Any]:
    """Queue a generation: {kind: image|video, request_id?, ...the REST body}; answers the queued
    content (the first answer again for a request_id seen before, as REST's Idempotency-Key)."""
    ensure_bounded(body)
    if not isinstance(body, dict) or body.get("kind") not in ("image", "video"):
        raise ValidationFailed("kind must be image or video",
                               details=[{"field": "kind", "message": "must be image or video"}])
    kind = body["kind"]
    fields = {k: v for k, v in body.items() if k not in ("kind", "request_id")}
    request = parse(GenerateVideoIn if kind == "video" else GenerateImageIn, fields)
    key = body.get("request_id")
    if key is not None:
        key = idempotency.valid_key(key, field="request_id")
    res = ctx.resources
    await res.rate_limiter.hit("generation", f"user:{ctx.user.id}")
    fingerprint = idempotency.fingerprint(f"POST /api/content/generate/{kind}", request)
    if key is not None:  # a retry gets its first answer, whatever screening would say today
        done = await idempotency.stored(res.sessionmaker, user_id=ctx.user.id, key=key, fingerprint=fingerprint)
        if done is not None:
            return idempotency.result(done)
    # Before the key's lock, the transaction's first statement: the classifier holds no connection.
    await content_service.screen_request(res.moderator, ctx.user, request)

    async def work() -> dict[str, Any]:
        return await content_service.create_generation(ctx.session, user=ctx.user, request=request,
                                                       queue=res.queue, storage=res.storage,
                                                       moderator=res.moderator)

    if key is None:
        return await work()
    # The REST route's operation and status: a REST retry and a socket retry of one key agree.
    outcome = await idempotency.run(ctx.session, user_id=ctx.user.id, key=key, status=202, work=work,
                                    fingerprint=fingerprint)
    return idempotency.result(outcome)


@action("content.cancel", body=CancelIn)
async def cancel_content(ctx: ActionContext, body: CancelIn) -> dict[str, Any]:
    """Stop a queued or processing generation and refund it; answers the canceled content."""
    return await content_service.cancel(ctx.session, user_id=ctx.user.id, content_id=body.content_id,
                                        storage=ctx.resources.storage)
