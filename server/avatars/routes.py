"""HTTP routes of /api/avatars."""

from __future__ import annotations

import uuid

import asyncpg
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server import keys
from server.auth.current_user import CurrentUser
from server.avatars import service
from server.avatars.schemas import (
    AvatarCreateIn,
    AvatarLimitOut,
    AvatarListQuery,
    AvatarOut,
    AvatarPage,
    AvatarStatsOut,
    AvatarUpdateIn,
)
from server.routing import Routes, path_uuid

routes = Routes(tags=("avatars",))
AVATAR = "/api/avatars/{avatar_id}"


def _avatar_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "avatar_id", what="Avatar")


@routes.get("/api/avatars", query=AvatarListQuery, response=AvatarPage)
async def list_avatars(request: web.Request, reader: asyncpg.Connection, user: CurrentUser,
                       query: AvatarListQuery) -> dict:
    """The caller's avatars, newest first (?search= matches name or description)."""
    return await service.list_avatars(reader, user_id=user.id, page=query.page, limit=query.limit,
                                      search=query.search, storage=request.app[keys.resources].storage)


@routes.post("/api/avatars", body=AvatarCreateIn, response=AvatarOut, status=202, rate_limit="generation",
             errors=(402, 403, 422, 503), idempotent=True,
             screen=lambda res, user, body: service.screen_create(res.moderator, user, body))
async def create_avatar(request: web.Request, session: AsyncSession, user: CurrentUser,
                        body: AvatarCreateIn) -> dict:
    """Create an avatar (10 credits); its profile and thumbnail are made by a job."""
    res = request.app[keys.resources]
    return await service.create_avatar(session, user=user, data=body, storage=res.storage, queue=res.queue,
                                       moderator=res.moderator)


@routes.get("/api/avatars/limit", response=AvatarLimitOut)
async def avatar_limit(session: AsyncSession, user: CurrentUser) -> dict:
    """How many avatars the caller's plan allows and how many are used."""
    return await service.avatar_limit(session, user_id=user.id)


@routes.get("/api/avatars/stats", response=AvatarStatsOut)
async def avatar_stats(session: AsyncSession, user: CurrentUser) -> dict:
    """Avatar counts by status, content made with them, and the most used."""
    return await service.avatar_stats(session, user_id=user.id)


@routes.get(AVATAR, response=AvatarOut, errors=(404,))
async def get_avatar(request: web.Request, session: AsyncSession, user: CurrentUser) -> dict:
    """One of the caller's avatars."""
    return await service.get_avatar(session, user_id=user.id, avatar_id=_avatar_id(request),
                                    storage=request.app[keys.resources].storage)


@routes.put(AVATAR, body=AvatarUpdateIn, response=AvatarOut, errors=(404, 409, 422, 503))
async def update_avatar(request: web.Request, session: AsyncSession, user: CurrentUser,
                        body: AvatarUpdateIn) -> dict:
    """Change an avatar's name, age, description, appearance, personality or style (screened again)."""
    res = request.app[keys.resources]
    return await service.update_avatar(session, user_id=user.id, avatar_id=_avatar_id(request), data=body,
                                       storage=res.storage, readers=res.reader, moderator=res.moderator)


@routes.delete(AVATAR, status=204, errors=(404,))
async def delete_avatar(request: web.Request, session: AsyncSession, user: CurrentUser) -> None:
    """Delete an avatar and its files; content made with it stays, without the avatar."""
    await service.delete_avatar(session, user_id=user.id, avatar_id=_avatar_id(request),
                                storage=request.app[keys.resources].storage)


@routes.post(AVATAR + "/regenerate-thumbnail", response=AvatarOut, status=202, rate_limit="generation",
             errors=(402, 403, 404, 409), idempotent=True)
async def regenerate_thumbnail(request: web.Request, session: AsyncSession, user: CurrentUser,
                               idempotency_key: str | None) -> dict:
    """Make a new thumbnail (5 credits); an Idempotency-Key header makes retries safe."""
    res = request.app[keys.resources]
    return await service.regenerate_thumbnail(
        session, user=user, avatar_id=_avatar_id(request), storage=res.storage, queue=res.queue,
        idempotency_key=idempotency_key,
    )
