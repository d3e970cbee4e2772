"""Who is calling: the access JWT checked against the user's current token version."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from aiohttp import web
from sqlalchemy import bindparam, select

from db.models import User
from db.reader import Query
from server import keys
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

    def require_verified(self) -> None:
        if not self.email_verified:
            raise EmailNotVerified()


_COLUMNS = (User.id, User.email, User.display_name, User.email_verified, User.token_version,
            User.created_at, User.is_active)
# Every authenticated request and socket runs this, on the raw read pool.
_BY_ID = Query(select(*_COLUMNS).where(User.id == bindparam("user_id")))


async def user_from_token(reader: asyncpg.Connection, token: str, *, secret: str,
                          remember: bool = True) -> CurrentUser:
    """The user behind an access token, if it is valid and not revoked."""
    claims = decode_access_token(token, secret=secret, remember=remember)
    return await load_user(reader, user_id=claims.user_id, token_version=claims.token_version)


async def load_user(reader: asyncpg.Connection, *, user_id: uuid.UUID, token_version: int) -> CurrentUser:
    """The user as the database knows it now, if active and signed in with this token version."""
    row = await _BY_ID.fetchrow(reader, user_id=user_id)
    if row is None or not row["is_active"]:
        raise Unauthorized("The access token is invalid")
    if row["token_version"] != token_version:
        raise TokenRevoked("This session has been signed out; sign in again")
    return CurrentUser(row["id"], row["email"], row["display_name"], row["email_verified"],
                       row["token_version"], row["created_at"])


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Send `Authorization: Bearer <access_token>`")
    return token.strip()


async def authenticate(request: web.Request, reader: asyncpg.Connection) -> CurrentUser:
    secret = request.app[keys.settings].jwt_secret.get_secret_value()
    return await user_from_token(reader, bearer_token(request), secret=secret)
