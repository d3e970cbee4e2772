"""What a declared route does around its handler: auth, rate limit, parsing, idempotency, the
transaction (retried on deadlocks) and the JSON answer."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from db.session import run_in_transaction
from server import idempotency, keys
from server.auth.current_user import authenticate
from server.json_io import (
    json_response,
    parse,
    read_json,
    refuse_body,
    refuse_oversized,
    require_json_media_type,
)
from server.routing import BODY_METHODS, Routes, RouteSpec


def install(app: web.Application, routes: list[Routes]) -> list[RouteSpec]:
    specs = [spec for group in routes for spec in group.specs]
    for spec in specs:
        app.router.add_route(spec.method, spec.path, _wrap(spec), name=_route_name(spec))
    return specs


def _route_name(spec: RouteSpec) -> str:
    return f"{spec.handler.__module__}.{spec.handler.__name__}"


def _wrap(spec: RouteSpec) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    wants = set(inspect.signature(spec.handler).parameters)
    if spec.idempotent and not spec.auth:
        raise TypeError(f"{_route_name(spec)}: an idempotent route has a user")
    if "idempotency_key" in wants and not spec.idempotent:
        raise TypeError(f"{_route_name(spec)} takes idempotency_key: declare it idempotent=True")

    async def call(request: web.Request, reader: Any) -> Any:
        res = request.app[keys.resources]
        kwargs: dict[str, Any] = {}
        user = None
        if request.method in BODY_METHODS:  # refused before auth, limits or reading
            require_json_media_type(request)
            refuse_oversized(request, limit=spec.body_limit)
            if spec.raw_body:  # the handler reads it: aiohttp stops at the limit
                request = request.clone(client_max_size=spec.body_limit)
        if spec.auth:
            if reader is None:
                # Given back before the body is read and the transaction opens: a request
                # holds one PostgreSQL connection at a time.
                async with res.reader.acquire() as conn:
                    user = await authenticate(request, conn)
            else:
                user = await authenticate(request, reader)
            request[keys.user_id] = user.id
        if spec.rate_limit:
            verdict = await res.rate_limiter.hit_request(request, spec.rate_limit,
                                                         user_id=user.id if user else None)
            if verdict is not None:
                request[keys.rate_verdict] = verdict  # its headers go on the response
        if "request" in wants:
            kwargs["request"] = request
        if "user" in wants:
            kwargs["user"] = user
        if "reader" in wants:
            kwargs["reader"] = reader
        if spec.query is not None:
            kwargs["query"] = parse(spec.query, dict(request.query))
        if spec.body is not None:
            raw = await read_json(request, limit=spec.body_limit, required=True)
            kwargs["body"] = parse(spec.body, raw)
        elif not spec.raw_body and request.method in BODY_METHODS:
            refuse_body(await read_json(request, limit=spec.body_limit))
        key = idempotency.key_from(request) if spec.idempotent else None
        if spec.screen is not None:
            if key is not None:  # a retry gets its first answer, whatever screening would say today
                assert user is not None
                done = await idempotency.stored(res.sessionmaker, user_id=user.id, key=key, fingerprint=(
                    idempotency.fingerprint(f"{request.method} {request.path}", kwargs.get("body"))))
                if done is not None:
                    return done
            await spec.screen(res, user, kwargs.get("body"))
        if "idempotency_key" in wants:
            kwargs["idempotency_key"] = key
        if "session" not in wants:
            if key is None:
                return await spec.handler(**kwargs)
            # Work with transactions of its own (a payment provider is called between them).
            return await idempotency.run_unwrapped(
                res.sessionmaker, res.redis, user_id=user.id, key=key, status=spec.status,
                fingerprint=idempotency.fingerprint(f"{request.method} {request.path}", kwargs.get("body")),
                work=lambda: spec.handler(**kwargs))
        # The transaction opens only now, after auth, limits and parsing: it stays short.
        # A deadlock or serialization failure runs the whole handler (and its key check) again.
        if key is None:
            async def work(session: Any) -> web.StreamResponse:
                # Encoded before the commit: a response that cannot be built leaves no write.
                return _render(spec, await spec.handler(session=session, **kwargs))

            return await run_in_transaction(res.sessionmaker, work)
        assert user is not None
        fingerprint = idempotency.fingerprint(f"{request.method} {request.path}", kwargs.get("body"))
        return await run_in_transaction(res.sessionmaker, lambda session: idempotency.run(
            session, user_id=user.id, key=key, status=spec.status, fingerprint=fingerprint,
            work=lambda: spec.handler(session=session, **kwargs)))

    async def handle(request: web.Request) -> web.StreamResponse:
        if "reader" in wants:  # a hot read: one connection for auth and the read
            async with request.app[keys.resources].reader.acquire() as reader:
                result = await call(request, reader)
        else:
            result = await call(request, None)
        if isinstance(result, idempotency.Outcome):  # encoded in its transaction
            return idempotency.response(result)
        return _render(spec, result)

    handle.__name__ = spec.handler.__name__
    return handle


def _render(spec: RouteSpec, result: Any) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if result is None:
        return web.Response(status=204 if spec.status in (200, 204) else spec.status)
    return json_response(result, status=spec.status)
