"""The aiohttp, python-engineio and python-socketio internals server/realtime/ overrides or calls, pinned by digest.

A library upgrade that changes one fails here by name: read the new code against our
override, then update the digest (and the version range in pyproject.toml) on purpose.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What the overrides were written and verified against (pyproject.toml keeps to these).
VERIFIED = {"python-socketio": "5.18.1", "python-engineio": "4.15.1", "aiohttp": "3.14.5"}
INTERNALS = {
    # WebSocketStream.take_over: the upgrade's tail, the keep-alive timer, the server's
    # connection list, and start() ending without closing a transport set to None.
    "aiohttp.web_protocol.RequestHandler._message_tail": "",
    "aiohttp.web_protocol.RequestHandler.data_received": "1ee57ebe052e6c80",
    "aiohttp.web_protocol.RequestHandler.keep_alive": "c393d9ac05c3017f",
    "aiohttp.web_protocol.RequestHandler.start": "2e565fd40c8e04fb",
    "aiohttp.web_protocol.RequestHandler.finish_response": "b7eb53db8f4b30ca",
    "aiohttp.web_server.Server.connection_lost": "fff3ade6ffe866a8",
    "engineio.async_server.AsyncServer._handle_connect": "5bd7edc1d1ae115a",
    "engineio.async_server.AsyncServer._make_response": "5f883ef57e34f34c",
    "engineio.async_server.AsyncServer._trigger_event": "4a09b6e47eb66532",
    "engineio.async_server.AsyncServer.shutdown": "3f734c62c291d56a",
    "engineio.async_socket.AsyncSocket._upgrade_websocket": "820b83efe96adb98",
    "engineio.async_socket.AsyncSocket.close": "faa2e93902543244",
    "engineio.async_socket.AsyncSocket.handle_get_request": "05eaae9f0a60d9be",
    "engineio.async_socket.AsyncSocket.receive": "a91ae36ec2fb5340",
    "engineio.async_socket.AsyncSocket.schedule_ping": "fe316639159cd70d",
    "engineio.async_socket.AsyncSocket.send": "0437276ccba7ab09",
    "engineio.base_server.BaseServer._bad_request": "af66afac6f6c67db",
    "engineio.base_server.BaseServer._cors_allowed_origins": "d0cad0c66d5333cb",
    "engineio.base_server.BaseServer._generate_sid_cookie": "30faebd18e6204cb",
    "engineio.base_server.BaseServer._ok": "b8f717402eac2b0d",
    "engineio.base_server.BaseServer._unauthorized": "ca5fd3aa77a14b77",
    "engineio.base_server.BaseServer._upgrades": "040ebcdf64fbf1b3",
    "socketio.async_pubsub_manager.AsyncPubSubManager._handle_emit": "4284671be955f644",
    "socketio.async_redis_manager.AsyncRedisManager._listen": "3e74fdd1084b4e13",
    "socketio.async_redis_manager.AsyncRedisManager._redis_connect": "da4530c936323c25",
    "socketio.async_redis_manager.AsyncRedisManager._redis_listen_with_retries": "ad347f253fd3423a",
    "socketio.async_server.AsyncServer._engineio_server_class": "199c42bf149247e0",
    "socketio.async_server.AsyncServer._handle_connect": "c97c480cf777de36",
    "socketio.async_server.AsyncServer._handle_eio_connect": "76704886d944a7e6",
    "socketio.async_server.AsyncServer._handle_eio_disconnect": "9344593148b66fd9",
    "socketio.async_server.AsyncServer._handle_eio_message": "bef50fc0e1635921",
    "socketio.async_server.AsyncServer._handle_event": "65178105ef8b593d",
    "socketio.async_server.AsyncServer._handle_event_internal": "472e8b723a12d507",
    "socketio.base_manager.BaseManager._get_logger": "32c5073c0cfffd40",
    "socketio.base_manager.BaseManager.basic_disconnect": "2933b50bc4b2ea7b",
    "socketio.base_manager.BaseManager.basic_enter_room": "3f509586d2d7f47e",
    "socketio.base_manager.BaseManager.basic_leave_room": "e27f3eea06d1c6a6",
    "socketio.async_server.AsyncServer._send_packet": "",
}


def _digest(qualified: str) -> str:
    module_name, class_name, attribute = qualified.rsplit(".", 2)
    owner = getattr(importlib.import_module(module_name), class_name)
    assert attribute in vars(owner), f"{qualified} is gone: server/realtime/ relies on it"
    value = vars(owner)[attribute]
    try:
        text = inspect.getsource(value)
    except TypeError:
        text = repr(value)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_the_installed_versions_are_the_verified_ones() -> None:
    assert {name: version(name) for name in VERIFIED} == VERIFIED
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, verified in VERIFIED.items():
        major, minor, _ = verified.split(".")
        assert re.search(rf'"{name}>={re.escape(verified)},<{major}\.{int(minor) + 1}"', pyproject), name


@pytest.mark.parametrize("qualified", sorted(INTERNALS))
def test_each_internal_we_build_on_is_as_verified(qualified: str) -> None:
    expected = INTERNALS[qualified] or _digest(qualified)  # an empty digest: only its presence is relied on
    assert _digest(qualified) == expected, (
        f"{qualified} changed since it was verified ({VERIFIED}): compare it with what "
        "server/realtime/ does around it, then update its digest here")


def test_the_list_names_every_override() -> None:
    from server.realtime.engine import LeanEngineServer, LeanSocket
    from server.realtime.manager import UserRoomManager
    from server.realtime.socket_server import SocketIOServer

    missing = []
    for cls in (LeanSocket, LeanEngineServer, SocketIOServer, UserRoomManager):
        libraries = [base for base in cls.__mro__[1:] if base.__module__.split(".")[0] in ("engineio", "socketio")]
        for name in vars(cls):
            if name.startswith("__"):
                continue
            for library in libraries:
                if name in vars(library):
                    if f"{library.__module__}.{library.__qualname__}.{name}" not in INTERNALS:
                        missing.append(f"{cls.__name__}.{name} overrides {library.__qualname__}.{name}")
                    break
    assert missing == []
