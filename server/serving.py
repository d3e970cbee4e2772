"""`lustify serve`: run the app and, on SIGTERM, drain it the way a deploy needs."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from server import keys
from server.app import create_app
from server.config import Settings

log = logging.getLogger("lustify")


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=settings.shutdown_grace_seconds)
    await runner.setup()
    # A reconnect storm (a deploy, a network blip) brings thousands of handshakes at once;
    # with aiohttp's default backlog of 128 the kernel drops the rest and clients wait out
    # SYN retransmits (1 s, 3 s, ...). The kernel caps this at net.core.somaxconn.
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096)
    await site.start()
    print(f"Lustify API listening on http://{settings.host}:{settings.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # aiohttp's own shutdown stops reading from connections at once, cutting off a request whose
    # body is still arriving. So: the listener closes first, sockets are told to go (clients
    # reconnect elsewhere and replay), requests in flight finish (bounded), then aiohttp cleans up.
    try:
        await stop.wait()
        log.info("draining: no new connections; closing sockets, finishing %d request(s)",
                 app[keys.in_flight].count)
        app[keys.draining].set()
        await site.stop()
        from server.realtime.server import hub_of

        await hub_of(app).close_all(app)
        if not await app[keys.in_flight].wait_idle(settings.shutdown_grace_seconds):
            log.warning("%d request(s) still running after %s s; stopping anyway",
                        app[keys.in_flight].count, settings.shutdown_grace_seconds)
    finally:
        await runner.cleanup()
