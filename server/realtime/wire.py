"""What goes on the wire: orjson for Socket.IO packets."""

from __future__ import annotations

from typing import Any

import orjson

from server.json_io import dumps as json_dumps


class OrjsonCodec:
    """The `json` module interface python-socketio and its Redis manager call."""

    @staticmethod
    def dumps(value: Any, **_: Any) -> str:
        return json_dumps(value).decode()

    @staticmethod
    def loads(raw: str | bytes, **_: Any) -> Any:
        return orjson.loads(raw)
