"""Client -> server actions: name -> async handler(ctx, body), each answered through the ack.

Adding one is a decorator line plus a function that calls the same service as REST:

    @action("content.cancel", body=CancelIn)
    async def cancel_content(ctx: ActionContext, body: CancelIn) -> dict: ...

The ack is `{ok: true, data}` or `{ok: false, error: {error, message, details}}`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import User
from server.auth.current_user import CurrentUser
from server.errors import TokenRevoked, Unauthorized

if TYPE_CHECKING:
    from server.realtime.server import Realtime
    from server.resources import Resources

ActionHandler = Callable[["ActionContext", Any], Awaitable[Any]]


@dataclass(frozen=True)
class ActionContext:
    sid: str
    user: CurrentUser  # re-read in the action's transaction when it has one
    resources: Resources
    session: AsyncSession | None  # one transaction around the action (None if it asked for none)
    realtime: Realtime


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


async def current_user(session: AsyncSession, *, user_id: uuid.UUID,
                       token_version: int) -> CurrentUser:
    """The socket's user as the database knows it now (verified email, name...)."""
    row = (await session.execute(
        select(User.id, User.email, User.display_name, User.email_verified,
               User.token_version, User.created_at, User.is_active)
        .where(User.id == user_id)
    )).one_or_none()
    if row is None or not row.is_active:
        raise Unauthorized("The account is no longer active")
    if row.token_version != token_version:
        raise TokenRevoked("This session has been signed out; sign in again")
    return CurrentUser(row.id, row.email, row.display_name, row.email_verified,
                       row.token_version, row.created_at)


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    last_event_id: str


@action("ping", transaction=False)
async def ping(ctx: ActionContext, body: Any) -> dict[str, Any]:
    """Liveness check from the client's side; answers with the server time."""
    return {"pong": True, "ts": time.time()}


@action("events.replay", body=ReplayIn, transaction=False)
async def replay_events(ctx: ActionContext, body: ReplayIn) -> dict[str, Any]:
    """Every event after `last_event_id`, in order; live ones follow the ack, none twice."""
    events = await ctx.realtime.replay_through_ack(ctx.sid, ctx.user.id, body.last_event_id)
    return {"events": [{"event": name, "data": payload} for name, payload in events]}
