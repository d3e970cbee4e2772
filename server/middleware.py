"""Request id, the API.md error shape for every error, security headers, CORS, metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from db.faults import is_transient
from server import keys
from server.errors import (
    Conflict,
    DomainError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
)
from server.json_io import json_response
from server.logs import request_id

log = logging.getLogger("server.http")
access = logging.getLogger("server.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,128}$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-site",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SERVER_HEADER = "lustify"
_HTTP_ERRORS: dict[int, type[DomainError]] = {
    400: ValidationFailed, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
}


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def error_response(exc: DomainError) -> web.Response:
    response = json_response(exc.body(), status=exc.status, headers=exc.headers)
    if exc.status == 413:
        response.force_close()  # rather than drain the rest of an oversized body
    return response


async def generic_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """`Server` names no software or version (aiohttp's default names both)."""
    response.headers["Server"] = SERVER_HEADER


class InFlight:
    """Counts HTTP requests being handled (websockets excluded: they are closed, not awaited)."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False


@web.middleware
def socketio_upgrades(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Outermost: a Socket.IO websocket goes straight to engine.io, past the REST chain.

    Each middleware's coroutine frame would live as long as the websocket (~2 KB per idle
    connection across the chain). Not `async` on purpose: it hands back the route's own
    coroutine and keeps no frame. engine.io checks origins and sizes itself.
    """
    if request.path.startswith("/socket.io/") and \
            request.headers.get("Upgrade", "").lower() == "websocket":
        entry = request.app.get(keys.socketio_websockets)
        if entry is not None:
            return entry(request)
    return handler(request)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: request id, timing, metrics, access log, and headers on every response."""
    incoming = request.headers.get("X-Request-ID", "")
    rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    token = request_id.set(rid)
    request[keys.request_id] = rid
    started = time.perf_counter()
    in_flight = request.app[keys.in_flight]
    in_flight.enter()
    try:
        response = await handler(request)
    finally:
        in_flight.leave()
        request_id.reset(token)
    elapsed = time.perf_counter() - started
    response.headers["X-Request-ID"] = rid
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Content-Security-Policy", API_CSP)
    settings = request.app[keys.settings]
    if settings.app_env == "production":
        response.headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
    verdict = request.get(keys.rate_verdict)
    if verdict is not None:
        for name, value in verdict.headers().items():
            response.headers.setdefault(name, value)
    metrics = request.app[keys.metrics]
    route = _route_label(request)
    metrics.http_requests.labels(request.method, route, str(response.status)).inc()
    metrics.http_duration.labels(request.method, route).observe(elapsed)
    if settings.access_log and route != "/health":  # health probes would drown the rest
        access.info("%s %s %d %.1f ms", request.method, request.path, response.status, elapsed * 1000,
                    extra={"request_id": rid})
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as {error, message, details}; a 500 never shows internals."""
    try:
        return await handler(request)
    except DomainError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_class = _HTTP_ERRORS.get(exc.status)
        if error_class is None:
            err = DomainError(exc.reason)
            err.status, err.code = exc.status, exc.reason.lower().replace(" ", "_")
        else:
            err = error_class()
        if exc.status == 405:
            err.headers = {"Allow": exc.headers.get("Allow", "")}
        return error_response(err)
    except IntegrityError as exc:
        # A uniqueness race the service did not pre-empt (e.g. two sign-ups with one email).
        if getattr(exc.orig, "sqlstate", None) == "23505" or "23505" in str(exc.orig):
            log.info("unique violation answered as 409: %s", exc.orig)
            return error_response(Conflict())
        log.exception("integrity error on %s %s", request.method, request.path)
        return error_response(
            InternalError(f"Internal server error (request id {request.get(keys.request_id)})")
        )
    except Exception as exc:
        if is_transient(exc):  # a dependency restarting, or a conflict that outlived its retries
            log.warning("dependency unavailable: %r", exc)
            return error_response(ServiceUnavailable(headers={"Retry-After": "1"}))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            InternalError(f"Internal server error (request id {request.get(keys.request_id)})")
        )


def cors(allowed: list[str]) -> Callable[..., Awaitable[web.StreamResponse]]:
    origins = set(allowed)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/socket.io"):
            return await handler(request)  # engine.io applies the same allow-list itself
        origin = request.headers.get("Origin")
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        if preflight:
            if origin not in origins:
                return error_response(DomainError("Origin not allowed"))
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Authorization, Content-Type"
            )
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Expose-Headers"] = (
                "X-Request-ID, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, "
                "Idempotent-Replayed"
            )
            response.headers.add("Vary", "Origin")
        return response

    return middleware


@web.middleware
async def body_cap(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The app-wide ceiling, before reading: routes refuse bodies past their own, lower, caps."""
    limit = request.app[keys.settings].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit // 1024} KB")
    return await handler(request)
