"""JSON in and out: orjson encoding, pydantic parsing into API.md validation errors."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from server.errors import PayloadTooLarge, ValidationFailed, field_errors

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


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; an empty body is an empty object."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge() from exc
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(
            "Malformed JSON body", details=[{"field": "body", "message": str(exc)}]
        ) from exc


def _nul_paths(value: Any, path: str = "") -> list[str]:
    """Where a NUL character hides in decoded input (PostgreSQL text cannot hold one)."""
    if isinstance(value, str):
        return [path or "body"] if "\x00" in value else []
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                found.append(where)
            found += _nul_paths(item, where)
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _nul_paths(item, f"{path}.{i}" if path else str(i))]
    return []


def parse(model: type[M], data: Any) -> M:
    """Validate input into `model`; every failure is a 400 with field details."""
    bad = _nul_paths(data)
    if bad:
        raise ValidationFailed("Text must not contain NUL characters",
                               details=[{"field": field, "message": "contains a NUL character"} for field in bad])
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
