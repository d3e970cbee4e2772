"""Access JWTs (HS256, pinned) and opaque random tokens stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

from server.errors import TokenExpired, Unauthorized

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["sub", "exp", "iat", "typ", "ver"]


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    token_version: int


def issue_access_token(*, user_id: uuid.UUID, token_version: int, secret: str, ttl: int) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user_id), "typ": "access", "ver": token_version,
        "iat": now, "exp": now + ttl, "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_access_token(token: str, *, secret: str) -> AccessClaims:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS}, leeway=5
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired("The access token has expired; refresh it") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("The access token is invalid") from exc
    if claims.get("typ") != "access" or not isinstance(claims.get("ver"), int):
        raise Unauthorized("The access token is invalid")
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except ValueError as exc:
        raise Unauthorized("The access token is invalid") from exc
    return AccessClaims(user_id=user_id, token_version=claims["ver"])


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
