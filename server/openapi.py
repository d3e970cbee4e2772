"""OpenAPI 3.1 document built from the declared routes' pydantic models, and /docs."""

from __future__ import annotations

import inspect
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server import __version__
from server.routing import BODY_METHODS, RouteSpec

_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")
_PATH_PARAM_PATTERN = re.compile(r"{([^}:]+)(?::([^}]*))?}")
_LITERALS = re.compile(r"^[\w-]+(?:\|[\w-]+)*$")  # `a|b|c`: an enum of names

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message", "details"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}},
    },
}

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Makes a retry safe (Stripe's semantics): the same key and body answer the first "
                   "response again; another body is 422 idempotency_key_reused; while the first still "
                   "runs, 409 idempotency_key_in_use. Scoped to the user, kept at least 24 h.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
REPLAYED_HEADER = {
    "description": "`true` when this is the stored first response to the Idempotency-Key",
    "schema": {"type": "string", "enum": ["true"]},
}

def build_document(specs: list[RouteSpec]) -> dict[str, Any]:
    models: set[type[BaseModel]] = set()
    for spec in specs:
        for model in (spec.body, spec.query, spec.response):
            if isinstance(model, type) and issubclass(model, BaseModel):
                models.add(model)
    ordered = sorted(models, key=lambda m: (m.__module__, m.__qualname__))
    refs, defs = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = ERROR_SCHEMA
    ref = {model: refs[(model, "validation")] for model in ordered}

    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        path = _PATH_PARAM.sub(r"{\1}", spec.path)
        op: dict[str, Any] = {
            "operationId": f"{spec.method.lower()}_{spec.handler.__name__}",
            "summary": spec.summary,
            "tags": list(spec.tags),
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": _path_schema(pattern)}
                for name, pattern in _PATH_PARAM_PATTERN.findall(spec.path)
            ],
            "responses": {},
        }
        if spec.query is not None:
            for name, field in spec.query.model_json_schema()["properties"].items():
                op["parameters"].append({
                    "name": name, "in": "query",
                    "required": name in spec.query.model_json_schema().get("required", []),
                    "schema": field,
                })
        if spec.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref[spec.body]}},
            }
        elif spec.raw_body:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {}}}}
        ok: dict[str, Any] = {"description": "OK"}
        if spec.response is not None:
            schema = ref[spec.response] if isinstance(spec.response, type) else spec.response
            media = spec.extra.get("media_type", "application/json")
            ok["content"] = {media: {"schema": schema}}
        op["responses"][str(spec.status)] = ok
        errors = set(spec.errors) | {400, 500}
        if _PATH_PARAM.search(spec.path):
            errors |= {404}  # a path value that names nothing
        if spec.method in BODY_METHODS:
            errors |= {413, 415}  # routing.py refuses oversized and non-JSON bodies
            op["x-max-body-bytes"] = spec.body_limit
        if spec.idempotent:
            op["parameters"].append(IDEMPOTENCY_KEY)
            ok["headers"] = {"Idempotent-Replayed": REPLAYED_HEADER}
            errors |= {409, 422}  # idempotency_key_in_use, idempotency_key_reused
        if spec.auth:
            errors |= {401}
            op["security"] = [{"bearer": []}]
        if spec.rate_limit:
            errors |= {429}
        if _uses_dependencies(spec):
            errors |= {503}
        for status in sorted(errors):
            op["responses"][str(status)] = {
                "description": "Error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        paths.setdefault(path, {})[spec.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {"title": "Lustify API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _path_schema(pattern: str) -> dict[str, Any]:
    if pattern and _LITERALS.match(pattern):
        return {"type": "string", "enum": pattern.split("|")}
    return {"type": "string"}


def _uses_dependencies(spec: RouteSpec) -> bool:
    """Whether the route reads PostgreSQL or Redis, and so answers 503 when one is down."""
    wants = set(inspect.signature(spec.handler).parameters)
    return spec.auth or bool(spec.rate_limit) or bool(wants & {"session", "reader"})
