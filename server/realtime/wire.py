"""What goes on the wire: orjson for Socket.IO packets."""

from __future__ import annotations

import re
from typing import Any

import orjson

from server.json_io import MAX_DEPTH, TOO_DEEP, nested_deeper_than
from server.json_io import dumps as json_dumps

_EVENT_NAME = re.compile(r'\s*\[\s*"((?:[^"\\]|\\.){0,100})"')


class OrjsonCodec:
    """The `json` module interface python-socketio and its Redis manager call."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return json_dumps(value).decode()

    @staticmethod
    def loads(raw: str | bytes, **_: Any) -> Any:
        """A packet's arguments nested past the bound (or past orjson's own 1,024) arrive as
        TOO_DEEP: the action answers a validation error through its ack, and nothing
        recurses into them (python-socketio's binary reassembly would)."""
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if "depth" not in str(exc):
                raise
        else:
            if not isinstance(value, list) or not nested_deeper_than(value, MAX_DEPTH + 1):
                return value
        name = _EVENT_NAME.match(raw if isinstance(raw, str) else raw.decode(errors="replace"))
        return [orjson.loads(f'"{name.group(1)}"') if name else "", TOO_DEEP]
