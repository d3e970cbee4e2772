"""The Socket.IO server on the aiohttp app, fanned out through Redis."""

from __future__ import annotations

import socketio
from aiohttp import web

from server.config import Settings

sio_key = web.AppKey("sio", socketio.AsyncServer)


def attach_socketio(app: web.Application, settings: Settings) -> socketio.AsyncServer:
    manager = socketio.AsyncRedisManager(settings.redis_dsn, channel=settings.key("socketio"))
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        cors_allowed_origins=settings.cors_origins,
        max_http_buffer_size=settings.socketio_max_message_bytes,
        http_compression=settings.socketio_compression,
        logger=False,
        engineio_logger=False,
    )
    sio.attach(app, socketio_path="socket.io")
    app[sio_key] = sio
    return sio
