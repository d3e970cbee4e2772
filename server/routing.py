"""Declared routes: what each REST route is (method, path, schemas, auth, limits); OpenAPI reads them
and server/route_handling.py runs them."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from server.errors import NotFound

Handler = Callable[..., Awaitable[Any]]
DEFAULT_MAX_BODY = 64 * 1024  # bytes; a route declares its own `max_body` when it needs another
RAW_MAX_BODY = 512 * 1024  # raw bodies are third parties' payloads: what Stripe sends in an event
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    tags: tuple[str, ...]
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None
    auth: bool = True
    rate_limit: str | None = "api"  # a RateLimiter policy name, or None
    errors: tuple[int, ...] = ()
    raw_body: bool = False
    idempotent: bool = False  # takes an Idempotency-Key (server/idempotency.py)
    max_body: int | None = None  # bytes; None: DEFAULT_MAX_BODY, or RAW_MAX_BODY for raw bodies
    # Called with (resources, user, body) before any transaction opens: a content screening
    # that may call the classifier must not hold a connection (the service screens again,
    # from the moderator's memory of what it allowed).
    screen: Callable[[Any, Any, Any], Awaitable[None]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def body_limit(self) -> int:
        return self.max_body or (RAW_MAX_BODY if self.raw_body else DEFAULT_MAX_BODY)


class Routes:
    """A list of RouteSpecs, registered on the app by `install`.

    A handler names what it needs and the wrapper provides it: `body` (parsed with the
    declared pydantic model), `query`, `user` (authenticated), `session` (one transaction
    around the handler, committed before the response is written), `reader` (a connection
    of the raw read pool, for hot reads with db/reader.py queries), `idempotency_key` (the
    client's Idempotency-Key or None, on routes declared `idempotent=True`), `request`.
    """

    def __init__(self, *, tags: tuple[str, ...] = ()) -> None:
        self.specs: list[RouteSpec] = []
        self.tags = tags

    def route(self, method: str, path: str, **options: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            summary = options.pop("summary", None) or (inspect.getdoc(handler) or "").split("\n")[0]
            tags = tuple(options.pop("tags", self.tags))
            self.specs.append(RouteSpec(method, path, handler, summary, tags, **options))
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **options)


def path_uuid(request: web.Request, name: str, *, what: str) -> uuid.UUID:
    """A UUID from the path; anything else is simply not found."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError as exc:
        raise NotFound(f"{what} not found") from exc
