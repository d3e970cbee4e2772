"""create_app(settings): the whole aiohttp application, built the same way in tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from server import keys, middleware, service_routes
from server.auth import passwords
from server.config import Settings
from server.gc_tuning import observe_gc_pauses, tune_collector
from server.metrics import Metrics
from server.openapi import build_document
from server.realtime.server import attach_socketio
from server.resources import open_resources
from server.route_handling import install
from server.routing import Routes


def route_groups() -> list[Routes]:
    """Every REST route of the app, in one place."""
    from server import files_routes
    from server.auth.routes import routes as auth_routes
    from server.avatars.routes import routes as avatar_routes
    from server.billing.routes import routes as billing_routes
    from server.content.routes import routes as content_routes
    from server.credits.routes import routes as credits_routes
    from server.dashboard.routes import routes as dashboard_routes
    from server.studio.routes import routes as studio_routes

    return [service_routes.routes, files_routes.routes, auth_routes, credits_routes, billing_routes,
            avatar_routes, content_routes, dashboard_routes, studio_routes]


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            middleware.socketio_upgrades,
            middleware.request_context,
            middleware.cors(settings.cors_origins),
            middleware.errors,
            middleware.body_cap,
        ],
        handler_args={"max_field_size": 16 * 1024},
    )
    app.on_response_prepare.append(middleware.generic_server_header)
    passwords.use_threads(settings.password_hash_threads)
    app[keys.settings] = settings
    app[keys.metrics] = Metrics()
    app[keys.in_flight] = middleware.InFlight()
    app[keys.draining] = asyncio.Event()

    async def resources_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_resources(settings, metrics=app[keys.metrics]) as resources:
            app[keys.resources] = resources
            yield

    app.cleanup_ctx.append(resources_ctx)
    app.cleanup_ctx.append(service_routes.metrics_listener)
    specs = install(app, route_groups())
    app[keys.openapi_document] = build_document(specs)
    attach_socketio(app, settings)
    if settings.gc_tuning:
        app.cleanup_ctx.append(tune_collector)  # after the resources above are open: it freezes them
    app.cleanup_ctx.append(observe_gc_pauses)  # serving pauses, not the startup collection
    return app
