"""HTTP routes of /api/content."""

from __future__ import annotations

import uuid

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server import keys
from server.auth.current_user import CurrentUser
from server.content import queries, service
from server.content.schemas import (
    ContentListQuery,
    ContentOut,
    ContentPage,
    ContentStats,
    GenerateImageIn,
    GenerateVideoIn,
)
from server.routing import Routes, path_uuid

routes = Routes(tags=("content",))


def _content_id(request: web.Request) -> uuid.UUID:
    return path_uuid(request, "content_id", what="Content")


@routes.get("/api/content", query=ContentListQuery, response=ContentPage)
async def list_content(request: web.Request, session: AsyncSession, user: CurrentUser,
                       query: ContentListQuery) -> dict:
    """The caller's images and videos, newest first (?type=&status=&avatar_id=)."""
    return await queries.list_content(
        session, user_id=user.id, storage=request.app[keys.resources].storage, page=query.page,
        limit=query.limit, type=query.type, status=query.status, avatar_id=query.avatar_id,
    )


@routes.get("/api/content/stats", response=ContentStats)
async def content_stats(session: AsyncSession, user: CurrentUser) -> dict:
    """Totals by type and status, and credits spent."""
    return await queries.content_stats(session, user_id=user.id)


@routes.post("/api/content/generate/image", body=GenerateImageIn, response=ContentOut, status=202,
             rate_limit="generation", errors=(402, 403, 404, 409, 422, 429, 503), idempotent=True,
             screen=lambda res, user, body: service.screen_request(res.moderator, user, body))
async def generate_image(request: web.Request, session: AsyncSession, user: CurrentUser,
                         body: GenerateImageIn) -> dict:
    """Queue an image generation (charged now, refunded if it fails)."""
    return await _generate(request, session, user, body)


@routes.post("/api/content/generate/video", body=GenerateVideoIn, response=ContentOut, status=202,
             rate_limit="generation", errors=(402, 403, 404, 409, 422, 429, 503), idempotent=True,
             screen=lambda res, user, body: service.screen_request(res.moderator, user, body))
async def generate_video(request: web.Request, session: AsyncSession, user: CurrentUser,
                         body: GenerateVideoIn) -> dict:
    """Queue a video generation, optionally animating one of your completed images."""
    return await _generate(request, session, user, body)


async def _generate(request: web.Request, session: AsyncSession, user: CurrentUser,
                    body: GenerateImageIn | GenerateVideoIn) -> dict:
    res = request.app[keys.resources]
    return await service.create_generation(session, user=user, request=body, queue=res.queue,
                                           storage=res.storage, moderator=res.moderator)


@routes.get("/api/content/{content_id}", response=ContentOut, errors=(404,))
async def get_content(request: web.Request, session: AsyncSession, user: CurrentUser) -> dict:
    """One image or video."""
    return await queries.get_content(session, user_id=user.id, content_id=_content_id(request),
                                     storage=request.app[keys.resources].storage)


@routes.delete("/api/content/{content_id}", status=204, errors=(404,))
async def delete_content(request: web.Request, session: AsyncSession, user: CurrentUser) -> None:
    """Delete it (a queued/processing one is canceled and refunded first)."""
    await service.delete_content(session, user_id=user.id, content_id=_content_id(request),
                                 storage=request.app[keys.resources].storage)


@routes.post("/api/content/{content_id}/retry", response=ContentOut, status=202,
             rate_limit="generation", errors=(402, 404, 409, 429), idempotent=True)
async def retry_content(request: web.Request, session: AsyncSession, user: CurrentUser) -> dict:
    """Generate a failed or canceled item again (charged again)."""
    res = request.app[keys.resources]
    return await service.retry(session, user=user, content_id=_content_id(request), queue=res.queue,
                               storage=res.storage)


@routes.post("/api/content/{content_id}/cancel", response=ContentOut, errors=(404, 409))
async def cancel_content(request: web.Request, session: AsyncSession, user: CurrentUser) -> dict:
    """Stop a queued or processing generation and refund it."""
    return await service.cancel(session, user_id=user.id, content_id=_content_id(request),
                                storage=request.app[keys.resources].storage)
