"""Who is calling: the access JWT checked against the user's current token version and the
signed-out sessions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from sqlalchemy import bindparam, select

from db.models import User
from db.reader import Query
from server import keys
from server.auth import revoked_sessions
from server.auth.tokens import decode_access_token
from server.errors import EmailNotVerified, TokenRevoked, Unauthorized


@dataclass(frozen=True)
class CurrentUser:
    id: uuid.UUID
    email: str
    display_name: str | None
    email_verified: bool
    token_version: int
    created_at: datetime
    session_id: uuid.UUID | None = None  # the signed-in session (refresh token family)

    def require_verified(self) -> None:
        if not self.email_verified:
            raise EmailNotVerified()


_COLUMNS = (User.id, User.email, User.display_name, User.email_verified, User.token_version,
            User.created_at, User.is_active)
# Every authenticated request and socket runs this, on the raw read pool.
_BY_ID = Query(select(*_COLUMNS).where(User.id == bindparam("user_id")))


async def load_user(reader: asyncpg.Connection, *, user_id: uuid.UUID, token_version: int,
                    session_id: uuid.UUID | None = None) -> CurrentUser:
    """The user as the database knows it now, if active and signed in with this token version."""
    row = await _BY_ID.fetchrow(reader, user_id=user_id)
    return user_from_row(row, token_version=token_version, session_id=session_id)


def user_from_row(row: Mapping[str, Any] | None, *, token_version: int,
                  session_id: uuid.UUID | None = None) -> CurrentUser:
    """The checks of `load_user` on a row of its columns (read one at a time or in a batch)."""
    if row is None or not row["is_active"]:
        raise Unauthorized("The access token is invalid")
    if row["token_version"] != token_version:
        raise TokenRevoked("This session has been signed out; sign in again")
    return CurrentUser(row["id"], row["email"], row["display_name"], row["email_verified"],
                       row["token_version"], row["created_at"], session_id)


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send `Authorization: Bearer <access_token>`")
    return token.strip()


async def authenticate(request: web.Request, reader: asyncpg.Connection) -> CurrentUser:
    """The user behind the request's access token, if it is valid and not revoked."""
    res = request.app[keys.resources]
    claims = decode_access_token(bearer_token(request), secret=res.settings.jwt_secret.get_secret_value())
    await revoked_sessions.ensure_live(res.redis, res.settings, reader, session_id=claims.session_id)
    return await load_user(reader, user_id=claims.user_id, token_version=claims.token_version,
                           session_id=claims.session_id)
