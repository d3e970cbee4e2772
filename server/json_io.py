"""JSON in and out: orjson encoding, pydantic parsing into API.md validation errors."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError

from server.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed, field_errors

M = TypeVar("M", bound=BaseModel)
_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, uuid.UUID):  # asyncpg's UUID subclass, which orjson does not know
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTS)


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    return web.Response(
        body=dumps(data), status=status, content_type="application/json", headers=headers
    )


MAX_DEPTH = 32  # request bodies need 3 levels; orjson itself stops at 1024, Python at ~1000
# The largest integer every client (JavaScript) reads exactly, and what jsonb gives back as
# an integer that orjson can still encode (1e20 comes back as a 21-digit int).
MAX_SAFE_NUMBER = 2**53 - 1
JSON_MEDIA_TYPES = ("application/json",)


def require_json_media_type(request: web.Request) -> None:
    """A body must be declared as JSON; an empty one needs no type."""
    if request.body_exists and request.content_type not in JSON_MEDIA_TYPES:
        raise UnsupportedMediaType()


def refuse_oversized(request: web.Request, *, limit: int) -> None:
    """The announced length, checked before a byte of the body is read."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(_too_large(limit))


def _too_large(limit: int) -> str:
    return f"The request body is larger than this endpoint's limit of {limit // 1024} KB"


async def read_body(request: web.Request, *, limit: int) -> bytes:
    """The request body, decompressed, read up to `limit` bytes (413 past it, 400 if it does not decompress)."""
    refuse_oversized(request, limit=limit)
    chunks: list[bytes] = []
    size = 0
    try:
        # Chunked or compressed bodies announce no true length: stop as soon as one passes the limit.
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(_too_large(limit))
            chunks.append(chunk)
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(_too_large(limit)) from exc
    except (HttpProcessingError, RequestPayloadError) as exc:  # its Content-Encoding does not match its bytes
        raise ValidationFailed("The request body could not be decoded",
                               details=[{"field": "body", "message": "does not match its Content-Encoding"}]) from exc
    return b"".join(chunks)


async def read_json(request: web.Request, *, limit: int, required: bool = False) -> Any:
    """The request body as JSON, read up to `limit` bytes; an empty body is an empty object,
    or a 400 when the route requires one."""
    require_json_media_type(request)
    raw = await read_body(request, limit=limit)
    if not raw.strip():
        if required:
            raise ValidationFailed("This endpoint needs a JSON body",
                                   details=[{"field": "body", "message": "missing"}])
        return {}
    try:
        return orjson.loads(raw)  # C, bounded by `limit` (64 KB parse in well under 1 ms)
    except orjson.JSONDecodeError as exc:
        message = "nested too deeply" if "depth" in str(exc) else str(exc)
        raise ValidationFailed(
            "Malformed JSON body", details=[{"field": "body", "message": message}]
        ) from exc


_NUMBERS = frozenset({int, float, bool})


class _TooDeep:
    """Stands in for a decoded value that nested past MAX_DEPTH (see realtime/wire.py)."""

    def __repr__(self) -> str:
        return "<nested too deeply>"


TOO_DEEP = _TooDeep()


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest past `limit` levels; without recursion, scalars in C."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if type(item) is dict else item
        if set(map(type, children)) & {dict, list}:
            stack += [(child, depth + 1) for child in children if type(child) in (dict, list)]
    return False


def _problems(value: Any) -> list[dict[str, str]]:
    """NULs (PostgreSQL text cannot hold one), depth and numbers out of range, found without
    recursion (input nested 1,000 deep is a 400, not a RecursionError). A container of only
    numbers or only strings is checked by builtins in C: 64 KB of integers in ~0.5 ms."""
    found: list[tuple[tuple[Any, ...], str]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            return [{"field": _field(path), "message": f"nested deeper than {MAX_DEPTH} levels"}]
        if type(item) is dict:
            if "\x00" in "".join(item):
                found += [((*path, key), "contains a NUL character") for key in item if "\x00" in key]
            children = list(item.values())
        else:
            children = item
        kinds = set(map(type, children))
        if kinds <= _NUMBERS:
            if not children or -MAX_SAFE_NUMBER <= min(children) and max(children) <= MAX_SAFE_NUMBER:
                continue
        elif kinds == {str} and "\x00" not in "".join(children):
            continue
        for key, child in (item.items() if type(item) is dict else enumerate(item)):
            kind = type(child)
            if kind is int or kind is float:
                if not -MAX_SAFE_NUMBER <= child <= MAX_SAFE_NUMBER:
                    found.append(((*path, key), f"numbers must be within +/-{MAX_SAFE_NUMBER}"))
            elif kind is str:
                if "\x00" in child:
                    found.append(((*path, key), "contains a NUL character"))
            elif kind is dict or kind is list:
                stack.append((child, (*path, key)))
    if type(value) is str and "\x00" in value:
        found.append(((), "contains a NUL character"))
    return [{"field": _field(path), "message": message} for path, message in found]


def _field(path: tuple[Any, ...]) -> str:
    return ".".join(map(str, path)) or "body"


def ensure_bounded(data: Any) -> None:
    """Depth, number range and NULs of decoded input, before anything recurses or stores."""
    if data is TOO_DEEP:
        raise ValidationFailed(details=[{"field": "body",
                                         "message": f"nested deeper than {MAX_DEPTH} levels"}])
    bad = _problems(data) if isinstance(data, (dict, list, str)) else []
    if bad:
        raise ValidationFailed(details=sorted(bad, key=lambda d: d["field"])[:50])


def parse(model: type[M], data: Any) -> M:
    """Validate input into `model`; every failure is a 400 with field details."""
    ensure_bounded(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(details=field_errors(exc.errors(include_url=False))) from exc


def refuse_body(data: Any) -> None:
    """Routes that take no body refuse one, as they refuse unknown fields."""
    if data in ({}, None):
        return
    fields = list(data) if isinstance(data, dict) else ["body"]
    raise ValidationFailed("This endpoint takes no request body",
                           details=[{"field": str(f), "message": "Unknown field"} for f in fields])
