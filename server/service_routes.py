"""Service endpoints: /health with real checks, /metrics, /openapi.json and /docs."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel

from db.reader import ping
from server import __version__, keys
from server.errors import NotFound, Unauthorized
from server.json_io import json_response
from server.metrics import generation_job_metrics
from server.middleware import generic_server_header
from server.queueing import live_workers
from server.resources import Resources
from server.routing import Routes
from server.studio.routes import docs_page

routes = Routes(tags=("service",))
CHECK_TIMEOUT = 2.0


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str]
    version: str
    # Provider details (e.g. an AI model the provider does not offer): shown, never a 503.
    providers: dict[str, dict] = {}


async def _check_database(res: Resources) -> str:
    # The raw read pool: one round trip (the ORM engine's BEGIN, SELECT, ROLLBACK were three,
    # each a turn of a busy event loop).
    await ping(res.reader)
    return "ok"


async def _check_redis(res: Resources) -> str:
    await res.redis.ping()
    return "ok"


async def _check_worker(res: Resources) -> str:
    return "ok" if await live_workers(res.redis, res.settings) else "stale"


async def _run_check(check, res: Resources) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return await check(res)
    except Exception as exc:
        return f"error: {type(exc).__name__}"


@routes.get("/health", response=HealthOut, auth=False, rate_limit=None, errors=(503,))
async def health(request: web.Request) -> web.Response:
    """Database and Redis reachability (503 names the failing one); `worker` is reported, not required."""
    res = request.app[keys.resources]
    database, redis, worker = await asyncio.gather(
        _run_check(_check_database, res), _run_check(_check_redis, res), _run_check(_check_worker, res))
    checks = {"database": database, "redis": redis}
    if request.app[keys.draining].is_set():
        checks["server"] = "draining"  # a deploy is stopping this process
    healthy = all(v == "ok" for v in checks.values())
    checks["worker"] = worker  # a load balancer must not drop this server when no worker runs
    body = {"status": "ok" if healthy else "unavailable", "checks": checks, "version": __version__,
            "providers": {"ai": res.ai.model_status()}}
    if not healthy:
        failing = ", ".join(name for name, v in checks.items() if v != "ok")
        body |= {"error": "service_unavailable", "message": f"Unhealthy: {failing}", "details": []}
    return json_response(body, status=200 if healthy else 503)


@routes.get("/metrics", auth=False, rate_limit=None, response={"type": "string"},
            extra={"media_type": "text/plain"}, errors=(401, 404))
async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (production: with METRICS_TOKEN as bearer token, or on METRICS_PORT)."""
    settings = request.app[keys.settings]
    token = settings.metrics_token.get_secret_value()
    if settings.metrics_port or (settings.app_env == "production" and not token):
        raise NotFound()  # served on its own listener, or not at all
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise Unauthorized("Send the metrics bearer token")
    return await metrics_response(request.app)


async def metrics_response(app: web.Application) -> web.Response:
    body, content_type = app[keys.metrics].render()
    res = app[keys.resources]
    try:
        body += await generation_job_metrics(res.redis, res.settings.key("metrics", "generation"))
    except Exception:  # metrics stay available while Redis is down
        pass
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """With METRICS_PORT set: /metrics alone on that port, for Prometheus inside the network."""
    settings = app[keys.settings]
    if not settings.metrics_port:
        yield
        return

    async def scrape(request: web.Request) -> web.Response:
        return await metrics_response(app)

    listener = web.Application()
    listener.router.add_get("/metrics", scrape)
    listener.on_response_prepare.append(generic_server_header)
    runner = web.AppRunner(listener, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    yield
    await runner.cleanup()


@routes.get("/openapi.json", auth=False, rate_limit=None, response={"type": "object"})
async def openapi(request: web.Request) -> web.Response:
    """This OpenAPI document."""
    return json_response(request.app[keys.openapi_document])


@routes.get("/docs", auth=False, rate_limit=None, response={"type": "string"},
            extra={"media_type": "text/html"})
async def docs(request: web.Request) -> web.Response:
    """Interactive API documentation (Swagger UI packaged with the app: works offline)."""
    return docs_page(request.app[keys.settings])
