"""Access JWTs (HS256, pinned) and opaque random tokens stored only as hashes."""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

from server.errors import TokenExpired, Unauthorized

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["sub", "exp", "iat", "typ", "ver", "sid"]
LEEWAY = 5


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    token_version: int
    expires_at: int
    # The refresh token family it came from (`sid`), so a logout can revoke the session's
    # access tokens before they expire (revoked_sessions.py).
    session_id: uuid.UUID


def issue_access_token(*, user_id: uuid.UUID, token_version: int, secret: str, ttl: int,
                       session_id: uuid.UUID | None = None) -> str:
    """A signed access token; without `session_id` it belongs to a session of its own."""
    now = int(time.time())
    claims = {
        "sub": str(user_id), "typ": "access", "ver": token_version,
        "sid": str(session_id or uuid.uuid4()),
        "iat": now, "exp": now + ttl, "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_access_token(token: str, *, secret: str, remember: bool = True) -> AccessClaims:
    """Verified claims; a token seen recently skips the signature check but not the expiry.

    `remember=False` checks without caching, for a token presented once (a socket's
    connect): the cache would only hold it, ~0.5 KB, for as long as it is among the
    8192 most recent.
    """
    if not token.isascii():  # a JWT is base64url; headers can carry undecodable bytes
        raise Unauthorized("The access token is invalid")
    claims = _verified(token, secret) if remember else _verified.__wrapped__(token, secret)
    if claims.expires_at + LEEWAY < time.time():
        raise TokenExpired("The access token has expired; refresh it")
    return claims


@functools.lru_cache(maxsize=8192)
def _verified(token: str, secret: str) -> AccessClaims:
    # Only successes are cached (lru_cache does not keep exceptions); revocation is checked
    # on every request by the caller (token version in the database, signed-out sessions in
    # Redis), so caching cannot resurrect a token.
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": REQUIRED_CLAIMS}, leeway=LEEWAY
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenExpired("The access token has expired; refresh it") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized("The access token is invalid") from exc
    if claims.get("typ") != "access" or not isinstance(claims.get("ver"), int):
        raise Unauthorized("The access token is invalid")
    try:
        user_id = uuid.UUID(str(claims["sub"]))
        session_id = uuid.UUID(str(claims["sid"]))
    except ValueError as exc:
        raise Unauthorized("The access token is invalid") from exc
    return AccessClaims(user_id=user_id, token_version=claims["ver"], expires_at=int(claims["exp"]),
                        session_id=session_id)


def new_opaque_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
