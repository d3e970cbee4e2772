"""GET /files/{key}: files behind signed URLs, when the app is the file server (local storage)."""

from __future__ import annotations

from aiohttp import web

from server import keys
from server.routing import Routes

routes = Routes(tags=("files",))


@routes.get("/files/{key:.+}", auth=False, rate_limit=None, errors=(403, 404),
            response={"type": "string", "format": "binary"}, extra={"media_type": "application/octet-stream"})
async def signed_file(request: web.Request) -> web.Response:
    """A stored image or video, readable until its signed URL expires."""
    storage = request.app[keys.resources].storage
    data, content_type = await storage.open_signed(
        request.match_info["key"], expires=request.query.get("expires", ""), sig=request.query.get("sig", "")
    )
    return web.Response(body=data, content_type=content_type,
                        headers={"Cache-Control": "private, max-age=300", "Content-Security-Policy": "default-src 'none'"})
