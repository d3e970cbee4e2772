"""The Socket.IO server on the aiohttp app: JWT on connect, one room per user, Redis fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

from aiohttp import web
from socketio.exceptions import ConnectionRefusedError as Refused

from db.session import run_in_transaction
from server import keys
from server.auth.current_user import load_user
from server.auth.tokens import decode_access_token
from server.config import Settings
from server.errors import (
    DomainError,
    InternalError,
    NotFound,
    RateLimited,
    TokenExpired,
    Unauthorized,
    ValidationFailed,
)
from server.json_io import parse
from server.realtime import outbox
from server.realtime.actions import ACTIONS, Action, ActionContext
from server.realtime.admission import Admission, Admissions
from server.realtime.connections import Connection
from server.realtime.feeds import Feeds
from server.realtime.manager import UserRoomManager
from server.realtime.publisher import user_room
from server.realtime.revocations import listen_for_revocations
from server.realtime.socket_server import INVALID_EVENT, SocketIOServer, after_reply
from server.realtime.wire import OrjsonCodec

log = logging.getLogger(__name__)
NAMESPACE = "/"
ACK_GRACE_SECONDS = 10.0
# The ids and seqs go as two comma-joined strings: encoding 10,000 uuids one by one took
# asyncpg ~15 ms of the event loop every second, a stall every delivery in it waited out.
_BEHIND = """
SELECT c.user_id::text AS user_id, c.event_seq
FROM unnest(string_to_array($1, ',')::uuid[], string_to_array($2, ',')::bigint[]) AS u(id, seen)
JOIN user_credits c ON c.user_id = u.id WHERE c.event_seq > u.seen
"""




def allowed_origin(listed: list[str]) -> Any:
    """Origins a browser may open a socket from: the listed ones, and the app's own (the studio)."""
    allowed = set(listed)

    def check(origin: str | None, environ: Mapping[str, Any]) -> bool:
        if origin is None or origin in allowed:
            return True
        host = environ.get("HTTP_HOST")
        return bool(host) and urlsplit(origin).netloc == host

    return check


class SocketHub:
    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.manager = UserRoomManager(settings.redis_dsn, channel=settings.key("socketio"))
        self.sio = SocketIOServer(
            async_mode="aiohttp",
            client_manager=self.manager,
            json=OrjsonCodec,
            cors_allowed_origins=allowed_origin(settings.cors_origins),
            max_http_buffer_size=settings.socketio_max_message_bytes,
            http_compression=settings.socketio_compression,
            websocket_compression=settings.socketio_compression,
            ping_interval=settings.socketio_ping_interval_seconds,
            ping_timeout=settings.socketio_ping_timeout_seconds,
            connect_timeout=settings.socketio_connect_timeout_seconds,
            logger=False,
            engineio_logger=False,
        )
        self.connections: dict[str, Connection] = {}
        self.closing: set[str] = set()  # cut off: out of its room, events refused, acks still going out
        self._closing_tasks: set[asyncio.Task[None]] = set()
        self.feeds = Feeds(fetch=self._fetch, deliver=self.manager.deliver, behind=self._behind)
        self.admissions = Admissions(lambda: self.app[keys.resources].reader,
                                     lambda: self.app[keys.resources].redis, settings)
        self.manager.feeds = self.feeds
        self.manager.on_resubscribed = self.catch_up
        self.sio.on("connect", self.on_connect)
        self.sio.on("disconnect", self.on_disconnect)
        for act in ACTIONS.values():
            self.sio.on(act.name, self._handler_for(act))
        self.sio.on("*", self.on_unknown_event)

    # connect / disconnect

    async def on_connect(self, sid: str, environ: Mapping[str, Any], auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("token")
        try:  # who is asking first: a stranger learns nothing from the rest being checked
            if not isinstance(token, str) or not token:
                raise Unauthorized("Connect with auth: {token: <access_token>}")
            # Checked once per socket, so not kept in the REST token cache.
            claims = decode_access_token(token, secret=self.settings.jwt_secret.get_secret_value(),
                                         remember=False)
        except DomainError as exc:
            raise Refused("unauthorized", {"error": exc.code, "message": exc.message}) from None
        try:
            last_event_id = outbox.parse_event_id(auth.get("last_event_id"))
        except ValueError:
            raise Refused("validation_error", {
                "error": "validation_error", "message": "last_event_id must be a non-negative integer",
                "details": [{"field": "last_event_id", "message": "invalid event id"}]}) from None
        user_key = str(claims.user_id)
        # Joined before the read, so an event committed meanwhile waits in the feed; the socket's
        # gate holds whatever reaches it until the CONNECT reply (and any backlog) is out.
        self.feeds.join(user_key)
        self.manager.hold(sid)
        try:
            admitted = await self.admissions.admit(claims, last_event_id)
        except BaseException as exc:
            self.feeds.leave(user_key)
            self.manager.forget(sid)
            if isinstance(exc, DomainError):
                if exc.status == 401:
                    raise Refused("unauthorized", {"error": exc.code, "message": exc.message}) from None
                raise Refused(exc.code, exc.body()) from None
            if not isinstance(exc, Exception):
                raise
            log.exception("socket authentication failed")
            raise Refused("service_unavailable") from None
        if not self._still_open(sid):  # it left while it was admitted: its disconnect has run
            self.feeds.leave(user_key)
            self.manager.forget(sid)
            raise Refused("disconnected")
        self.connections[sid] = Connection(admitted.user, expires_at=claims.expires_at)
        self.app[keys.metrics].socket_connections.inc()
        await self.sio.enter_room(sid, user_room(admitted.user.id))
        await self.feeds.known(user_key, admitted.latest)
        after_reply(lambda: self._send_backlog(sid, admitted, last_event_id))

    def _still_open(self, sid: str) -> bool:
        eio_sid = self.manager.eio_sid_from_sid(sid, NAMESPACE)
        session = self.sio.eio.sockets.get(eio_sid) if eio_sid is not None else None
        return session is not None and not session.closing and not session.closed

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.closing.discard(sid)
        conn = self.connections.pop(sid, None)
        if conn is not None:
            self.app[keys.metrics].socket_connections.dec()
            self.feeds.leave(str(conn.user.id))
        self.manager.forget(sid)

    # replay

    async def _send_backlog(self, sid: str, admitted: Admission, last_event_id: int | None) -> None:
        """After the CONNECT reply: a resume's missed events, then what was held meanwhile.
        Everything up to the newest id read at connect is history (replayed or not), so
        held events at or below it are dropped."""
        floor = admitted.latest
        try:
            for _, name, payload in admitted.backlog:
                await self.sio.emit(name, payload, to=sid, ignore_queue=True)
            if admitted.more and last_event_id is not None:  # past the first page
                async with self.app[keys.resources].reader.acquire() as reader:
                    newest, events = await outbox.replay(reader, user_id=admitted.user.id,
                                                         after=admitted.backlog[-1][0])
                floor = max(floor, newest)
                for _, name, payload in events:
                    await self.sio.emit(name, payload, to=sid, ignore_queue=True)
        except Exception:
            log.exception("replay on connect failed")
        finally:
            await self._release(sid, floor)

    async def replay_through_ack(self, sid: str, user_id: Any, last_event_id: int) -> list[Any]:
        """The backlog for an `events.replay` ack; held live events follow the ack."""
        self.manager.hold(sid)
        floor = None
        try:
            async with self.app[keys.resources].reader.acquire() as reader:
                floor, events = await outbox.replay(reader, user_id=user_id, after=last_event_id)
        finally:
            after_reply(lambda: self._release(sid, floor))
        return [(name, payload) for _, name, payload in events]

    async def _release(self, sid: str, floor: int | None) -> None:
        while batch := self.manager.release(sid, floor):
            floor = None
            for name, payload in batch:
                await self.sio.emit(name, payload, to=sid, ignore_queue=True)

    # the outbox side of the feeds

    async def _fetch(self, user: str, after: int, upto: int | None) -> tuple[int, list[Any]]:
        async with self.app[keys.resources].reader.acquire() as reader:
            return await outbox.read_since(reader, user_id=user, after=after, upto=upto)

    async def _behind(self, seen: dict[str, int]) -> dict[str, int]:
        async with self.app[keys.resources].reader.acquire() as reader:
            rows = await reader.fetch(_BEHIND, ",".join(seen), ",".join(map(str, seen.values())))
        return {row["user_id"]: row["event_seq"] for row in rows}

    async def catch_up(self) -> None:
        try:
            await self.feeds.catch_up()
        except Exception as exc:
            log.warning("event catch-up failed: %r", exc)

    async def _catch_up_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.realtime_catch_up_seconds)
            await self.catch_up()

    # client -> server actions

    def _handler_for(self, act: Action) -> Any:
        async def handle(sid: str, *args: Any) -> dict[str, Any]:
            return await self._run(act, sid, args[0] if args else None)

        handle.__name__ = f"action_{act.name}"
        return handle

    async def _run(self, act: Action, sid: str, data: Any) -> dict[str, Any]:
        conn = self.connections.get(sid)
        if conn is None or sid in self.closing:
            return _failure(Unauthorized("This connection is closing"))
        if not self._within_rate(sid, conn):
            return _failure(RateLimited("Too many events on this connection"))
        resources = self.app[keys.resources]
        try:
            body = parse(act.body, {} if data is None else data) if act.body else data
            if act.transaction:
                if time.time() > conn.expires_at:
                    raise TokenExpired("The access token of this connection has expired; "
                                       "reconnect with a fresh one")
                # The user as they are now (e.g. verified since connecting, or signed out).
                async with resources.reader.acquire() as reader:
                    user = await load_user(reader, user_id=conn.user.id,
                                           token_version=conn.user.token_version)
                result = await run_in_transaction(resources.sessionmaker, lambda session: act.handler(
                    ActionContext(sid, user, resources, session, self), body))
            else:
                result = await act.handler(ActionContext(sid, conn.user, resources, None, self), body)
        except DomainError as exc:
            return _failure(exc)
        except Exception:
            log.exception("socket action %s failed", act.name)
            return _failure(InternalError())
        return {"ok": True, "data": result}

    async def on_unknown_event(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        if sid in self.closing:
            return _failure(Unauthorized("This connection is closing"))
        conn = self.connections.get(sid)
        if conn is not None and not self._within_rate(sid, conn):
            return _failure(RateLimited("Too many events on this connection"))
        if event == INVALID_EVENT:
            return _failure(ValidationFailed(
                "A frame is [event name, argument] in JSON, without binary attachments",
                details=[{"field": "frame", "message": "not an event this server takes"}]))
        return _failure(NotFound(f"Unknown event {event!r}"))

    def _within_rate(self, sid: str, conn: Connection) -> bool:
        limit = self.settings.socketio_client_events_per_10s
        if conn.allow_event(asyncio.get_running_loop().time(), limit):
            return True
        if conn.window_events == limit + 1:
            log.warning("socket %s of user %s exceeded %d events/10s; disconnecting",
                        sid, conn.user.id, limit)
            self.cut_off_soon(sid)
        return False

    # closing sockets

    def cut_off_soon(self, sid: str) -> None:
        """Close a socket for good, at once for everything but the acks it is owed (in the background)."""
        if sid in self.closing:
            return
        self.closing.add(sid)
        conn = self.connections.get(sid)
        if conn is not None:  # no live event reaches it from now on
            self.manager.basic_leave_room(sid, NAMESPACE, user_room(conn.user.id))
        task = asyncio.get_running_loop().create_task(self.cut_off(sid))
        self._closing_tasks.add(task)
        task.add_done_callback(self._closing_tasks.discard)

    async def cut_off(self, sid: str) -> None:
        """Close a socket for good: its namespace, then its transport."""
        # Actions it sent before it was cut off may be charging now: an accepted action always
        # gets its ack (API.md), so they finish first; new ones are refused meanwhile.
        self.closing.add(sid)
        await self.sio.settle(sid, timeout=ACK_GRACE_SECONDS)
        eio_sid = self.manager.eio_sid_from_sid(sid, NAMESPACE)
        await self.sio.disconnect(sid, ignore_queue=True)
        if eio_sid is not None:
            await self._close_transports([eio_sid])

    async def _close_transports(self, eio_sids: list[str]) -> None:
        """engine.io CLOSE to each, then its websocket closed (after a grace for the peer's reply)."""
        for eio_sid in eio_sids:
            socket = self.sio.eio.sockets.get(eio_sid)
            if socket is not None:
                await socket.close(wait=False)

    async def close_revoked(self, user_id: str) -> None:
        """Tell this process's sockets of the user their session ended, then close them."""
        sids = [sid for sid, _ in self.manager.get_participants(NAMESPACE, user_room(user_id))]
        for sid in sids:
            await self.sio.emit("session.revoked", {"reason": "signed_out"}, to=sid,
                                ignore_queue=True)
            self.cut_off_soon(sid)

    async def close_revoked_session(self, user_id: str, session_id: str) -> None:
        """The same, for the sockets of one signed-in session of the user (its logout)."""
        sids = [sid for sid, _ in self.manager.get_participants(NAMESPACE, user_room(user_id))
                if (conn := self.connections.get(sid)) is not None
                and str(conn.user.session_id) == session_id]
        for sid in sids:
            await self.sio.emit("session.revoked", {"reason": "signed_out"}, to=sid,
                                ignore_queue=True)
            self.cut_off_soon(sid)

    # lifecycle

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        self.sio.manager_initialized = True
        self.manager.initialize()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.manager.subscribed.wait(), 5)
        subscribed = asyncio.Event()
        listener = asyncio.create_task(listen_for_revocations(
            self.settings.redis_dsn, self.settings.key("revocations"), self.close_revoked,
            on_session_revoked=self.close_revoked_session, subscribed=subscribed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), 5)
        catching_up = asyncio.create_task(self._catch_up_forever())
        yield
        for task in (listener, catching_up):
            task.cancel()
        await asyncio.gather(listener, catching_up, return_exceptions=True)
        await self.feeds.close()
        await self.admissions.close()
        await self.sio.shutdown()
        thread = getattr(self.manager, "thread", None)
        if thread is not None:
            thread.cancel()
            await asyncio.gather(thread, return_exceptions=True)
        if self.manager.redis is not None:
            await self.manager.redis.aclose()

    async def close_all(self, app: web.Application) -> None:
        """On shutdown: close every socket so clients reconnect to another instance (acks sent first)."""
        self.closing.update(self.connections)  # no new action starts; the running ones ack first
        await asyncio.gather(*(self.sio.settle(sid, timeout=ACK_GRACE_SECONDS) for sid in list(self.connections)))
        if self._closing_tasks:
            await asyncio.wait(set(self._closing_tasks), timeout=ACK_GRACE_SECONDS + 2)
        await self._close_transports(list(self.sio.eio.sockets))
        closing = self.sio.eio.closing_websockets
        if closing:
            await asyncio.wait(closing)  # each bounded by its close grace


def _failure(exc: DomainError) -> dict[str, Any]:
    return {"ok": False, "error": exc.body()}


def hub_of(app: web.Application) -> SocketHub:
    """The app's SocketHub, typed."""
    return cast(SocketHub, app[keys.socket_hub])


def attach_socketio(app: web.Application, settings: Settings) -> SocketHub:
    realtime = SocketHub(app, settings)
    realtime.sio.attach(app, socketio_path="socket.io")
    app[keys.socketio_websockets] = realtime.sio.eio.websocket_entry
    app.cleanup_ctx.append(realtime.lifecycle)
    app.on_shutdown.append(realtime.close_all)
    app[keys.socket_hub] = realtime
    return realtime
