"""Typed application keys: everything create_app puts on the app."""

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.config import Settings
from server.metrics import Metrics
from server.ratelimit import Verdict
from server.resources import Resources

settings = web.AppKey("settings", Settings)
resources = web.AppKey("resources", Resources)
metrics = web.AppKey("metrics", Metrics)
openapi_document = web.AppKey("openapi_document", dict)  # built once from the declared routes
# Serves a /socket.io websocket upgrade (server/realtime/engine.py), ahead of the middlewares.
socketio_websockets = web.AppKey("socketio_websockets", Callable[[web.Request], Awaitable[web.StreamResponse]])
# Requests being handled, and whether the process is draining (server/serving.py).
in_flight = web.AppKey("in_flight", object)
draining = web.AppKey("draining", asyncio.Event)
# The Socket.IO side of the app (server/realtime/server.py, which imports this module: read
# it with `server.realtime.server.hub_of(app)` for its type).
socket_hub = web.AppKey("socket_hub", object)

request_id = web.RequestKey("request_id", str)
rate_verdict = web.RequestKey("rate_verdict", Verdict)
user_id = web.RequestKey("user_id", object)
