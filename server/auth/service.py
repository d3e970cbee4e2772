"""Accounts and sessions: register, login, refresh rotation, verification, reset, profile."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy import DateTime, LargeBinary, String, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db.models import AuthToken, RefreshToken, User, UserCredits
from db.session import after_commit, run_in_transaction, transaction
from server import activity
from server.auth import emails, revoked_sessions
from server.auth.passwords import burn_verify, hash_password, verify_password
from server.auth.schemas import ProfileUpdateIn, RegisterIn
from server.auth.tokens import issue_access_token, new_opaque_token, token_hash
from server.billing.plans import SIGNUP_CREDITS
from server.billing.queries import subscription_and_plan
from server.config import Settings
from server.credits import ledger
from server.credits.queries import get_credits
from server.errors import (
    Conflict,
    InvalidCredentials,
    InvalidToken,
    TokenExpired,
    TokenRevoked,
    Unauthorized,
    ValidationFailed,
)
from server.queueing import enqueue
from server.realtime.revocations import revoke_session_sockets, revoke_sockets

VERIFY_TTL = timedelta(hours=24)
RESET_TTL = timedelta(hours=1)
USER_COLUMNS = (User.id, User.email, User.display_name, User.email_verified, User.created_at,
                User.timezone)

log = logging.getLogger(__name__)


class ReusedRefreshToken(TokenRevoked):
    """A rotated token came back: the family is revoked, and that must be committed."""

    commit_before_raise = True


@dataclass(frozen=True)
class Session:
    user: dict[str, Any]
    access_token: str
    refresh_token: str
    expires_in: int

    def body(self) -> dict[str, Any]:
        tokens = {"access_token": self.access_token, "refresh_token": self.refresh_token,
                  "token_type": "Bearer", "expires_in": self.expires_in}
        return {"user": self.user, **tokens, "tokens": tokens}


def _now() -> datetime:
    return datetime.now(UTC)


async def _user_row(session: AsyncSession, user_id: uuid.UUID) -> dict[str, Any]:
    row = (await session.execute(select(*USER_COLUMNS).where(User.id == user_id))).mappings().one()
    return dict(row)


async def _start_session(
    session: AsyncSession, *, user_id: uuid.UUID, token_version: int, settings: Settings,
    family_id: uuid.UUID | None = None, meta: dict[str, str | None] | None = None,
) -> Session:
    refresh = new_opaque_token()
    family_id = family_id or uuid.uuid4()
    await session.execute(insert(RefreshToken).values(
        user_id=user_id, family_id=family_id, token_hash=token_hash(refresh),
        expires_at=_now() + timedelta(days=settings.refresh_token_ttl_days), **(meta or {}),
    ))
    access = issue_access_token(
        user_id=user_id, token_version=token_version, session_id=family_id,
        secret=settings.jwt_secret.get_secret_value(), ttl=settings.access_token_ttl_seconds,
    )
    return Session(await _user_row(session, user_id), access, refresh, settings.access_token_ttl_seconds)


async def _void_tokens(session: AsyncSession, user_id: uuid.UUID, *purposes: str) -> None:
    await session.execute(update(AuthToken).where(
        AuthToken.user_id == user_id, AuthToken.purpose.in_(purposes), AuthToken.used_at.is_(None),
    ).values(used_at=_now()))


async def _issue_email_token(
    session: AsyncSession, *, user_id: uuid.UUID, email: str, purpose: str, ttl: timedelta
) -> str:
    """A new single-use token; earlier unused ones of the same purpose stop working."""
    await _void_tokens(session, user_id, purpose)
    token = new_opaque_token()
    await session.execute(insert(AuthToken).values(
        user_id=user_id, purpose=purpose, token_hash=token_hash(token), email=email,
        expires_at=_now() + ttl,
    ))
    return token


def _send_later(session: AsyncSession, queue: ArqRedis, message: emails.Message) -> None:
    after_commit(session, lambda: enqueue(
        queue, "send_email", to=message.to, subject=message.subject, text=message.text
    ))


async def _consume_email_token(session: AsyncSession, *, token: str, purpose: str) -> AuthToken:
    row = (
        await session.execute(
            select(AuthToken).where(AuthToken.token_hash == token_hash(token),
                                    AuthToken.purpose == purpose).with_for_update()
        )
    ).scalar_one_or_none()
    if row is None or row.used_at is not None or row.expires_at <= _now():
        raise InvalidToken()
    row.used_at = _now()
    return row


async def _revoke_all_refresh(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=_now())
    )


async def register(
    sessionmaker: async_sessionmaker[AsyncSession], *, data: RegisterIn, settings: Settings,
    queue: ArqRedis, notify: bool = True,
) -> uuid.UUID | None:
    """Create the account on the free plan with its signup credits and send the verification
    email; a known address gets an email saying so instead (None), callers the same answer.

    The password is hashed before the transaction opens: no connection waits for bcrypt.
    """
    password_hash = await hash_password(data.password, rounds=settings.bcrypt_rounds)
    return await run_in_transaction(sessionmaker, lambda session: _create_account(
        session, data=data, password_hash=password_hash, settings=settings, queue=queue, notify=notify))


async def _create_account(
    session: AsyncSession, *, data: RegisterIn, password_hash: str, settings: Settings,
    queue: ArqRedis, notify: bool,
) -> uuid.UUID | None:
    user_id = (
        await session.execute(
            insert(User)
            .values(email=data.email, password_hash=password_hash, display_name=data.display_name,
                    date_of_birth=data.date_of_birth)
            .on_conflict_do_nothing(index_elements=[User.email])
            .returning(User.id)
        )
    ).scalar_one_or_none()
    if user_id is None:
        if notify:
            _send_later(session, queue, emails.account_exists(settings, to=data.email))
        return None
    await session.execute(insert(UserCredits).values(user_id=user_id))
    await activity.record(session, user_id=user_id, type="account.created",
                          message="Welcome to Lustify! Your account is ready.")
    await ledger.grant(session, user_id=user_id, amount=SIGNUP_CREDITS, key=f"signup:{user_id}",
                       reason="Signup bonus", type="bonus")
    token = await _issue_email_token(session, user_id=user_id, email=data.email,
                                     purpose="verify_email", ttl=VERIFY_TTL)
    if notify:  # else the inbox had its share of our emails this hour: resend-verification later
        _send_later(session, queue, emails.verification(settings, to=data.email, token=token))
    return user_id


async def login(
    sessionmaker: async_sessionmaker[AsyncSession], *, email: str, password: str,
    settings: Settings, meta: dict[str, str | None] | None = None,
) -> Session:
    """Same answer and the same bcrypt work whether or not the email exists.

    No connection is held while bcrypt runs: logins queue for its few threads
    (server/auth/passwords.py), and must not hold the pool meanwhile.
    """
    async with transaction(sessionmaker) as session:
        user = (await session.execute(select(User.id, User.password_hash, User.is_active)
                                      .where(User.email == email))).one_or_none()
    if user is None:
        await burn_verify(password, rounds=settings.bcrypt_rounds)
        raise InvalidCredentials()
    if not await verify_password(password, user.password_hash) or not user.is_active:
        raise InvalidCredentials()

    async def start(session: AsyncSession) -> Session:
        token_version = (await session.execute(
            update(User).where(User.id == user.id, User.password_hash == user.password_hash)
            .values(last_login_at=_now()).returning(User.token_version)
        )).scalar_one_or_none()
        if token_version is None:  # the password changed while this one was checked
            raise InvalidCredentials()
        return await _start_session(session, user_id=user.id, token_version=token_version,
                                    settings=settings, meta=meta)

    return await run_in_transaction(sessionmaker, start)


async def refresh(
    session: AsyncSession, *, refresh_token: str, settings: Settings, redis: Redis,
    meta: dict[str, str | None] | None = None,
) -> Session:
    """Rotate: the presented token is spent; presenting a spent one revokes its family."""
    row = (
        await session.execute(
            select(RefreshToken).where(RefreshToken.token_hash == token_hash(refresh_token)).with_for_update()
        )
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("The refresh token is invalid")
    if row.revoked_at is not None:
        raise TokenRevoked("This session has been signed out; sign in again")
    if row.rotated_at is not None:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == row.family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
        # A stolen token's session ends everywhere at once: its access tokens and sockets too.
        try:
            await revoked_sessions.revoke(redis, settings, session_ids=[row.family_id])
        except Exception as exc:  # Redis down: the check then reads the family revoked above
            log.warning("reused refresh token: session %s revoked in PostgreSQL only (%r)", row.family_id, exc)
        revoke_session_sockets(session, row.user_id, row.family_id)
        raise ReusedRefreshToken("This refresh token was already used; the session is revoked")
    if row.expires_at <= _now():
        raise TokenExpired("The refresh token has expired; sign in again")
    user = (await session.execute(select(User.token_version, User.is_active).where(User.id == row.user_id))).one()
    if not user.is_active:
        raise Unauthorized("The account is disabled")
    row.rotated_at = _now()
    return await _start_session(session, user_id=row.user_id, token_version=user.token_version,
                                settings=settings, family_id=row.family_id, meta=meta)


async def logout(
    session: AsyncSession, *, user_id: uuid.UUID, session_id: uuid.UUID, refresh_token: str,
    redis: Redis, settings: Settings,
) -> None:
    """Sign out the caller's session and the one of this refresh token (if it is the caller's):
    their refresh tokens, their access tokens at once, and their open sockets."""
    family = (
        await session.execute(
            select(RefreshToken.family_id).where(RefreshToken.token_hash == token_hash(refresh_token),
                                                 RefreshToken.user_id == user_id)
        )
    ).scalar_one_or_none()
    families = {session_id} | ({family} if family is not None else set())
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.family_id.in_(families),
               RefreshToken.revoked_at.is_(None))
        .values(revoked_at=_now())
    )
    # Before the commit: if Redis cannot take it, the logout fails (503) instead of leaving
    # access tokens alive; after it, each server closes the sessions' sockets.
    await revoked_sessions.revoke(redis, settings, session_ids=families)
    for family_id in families:
        revoke_session_sockets(session, user_id, family_id)


async def verify_email(session: AsyncSession, *, token: str, settings: Settings,
                       queue: ArqRedis) -> dict[str, Any]:
    """Mark the address verified (or move the account to it, for an email change); the link
    works once and only for the address it was sent to."""
    try:
        record = await _consume_email_token(session, token=token, purpose="verify_email")
    except InvalidToken:
        record = await _consume_email_token(session, token=token, purpose="change_email")
        return await _move_to(session, record, settings=settings, queue=queue)
    user = await session.get(User, record.user_id, with_for_update=True)
    if user is None or user.email != record.email:
        raise InvalidToken()
    if not user.email_verified:
        user.email_verified = True
        user.email_verified_at = _now()
        await activity.record(session, user_id=user.id, type="account.verified",
                              message="Your email address is verified")
    await session.flush()
    return await _user_row(session, user.id)


async def _move_to(session: AsyncSession, record: AuthToken, *, settings: Settings,
                   queue: ArqRedis) -> dict[str, Any]:
    """An email change confirmed from the new address: it is the account's, and verified."""
    user = await session.get(User, record.user_id, with_for_update=True)
    if user is None:
        raise InvalidToken()
    taken = (await session.execute(select(func.count()).select_from(User).where(
        User.email == record.email, User.id != user.id))).scalar_one()
    if taken:  # another account took the address since the link was sent
        raise Conflict("An account with this email already exists",
                       details=[{"field": "email", "message": "already registered"}])
    old_email = user.email
    user.email = record.email
    user.email_verified = True
    user.email_verified_at = _now()
    # Links mailed to the old address must not work for the new one.
    await _void_tokens(session, user.id, "reset_password", "verify_email")
    _send_later(session, queue, emails.email_changed(settings, to=old_email, new_email=record.email))
    await activity.record(session, user_id=user.id, type="account.email_changed",
                          message="Your email address changed")
    await session.flush()
    return await _user_row(session, user.id)


async def resend_verification(
    session: AsyncSession, *, user_id: uuid.UUID, settings: Settings, queue: ArqRedis
) -> None:
    user = await session.get(User, user_id)
    if user is None or user.email_verified:
        return
    token = await _issue_email_token(session, user_id=user.id, email=user.email,
                                     purpose="verify_email", ttl=VERIFY_TTL)
    _send_later(session, queue, emails.verification(settings, to=user.email, token=token))


PASSWORD_RESET_JOB = "send_password_reset"


async def forgot_password(*, email: str, queue: ArqRedis) -> None:
    """Queue the reset email; whether the account exists is looked up by the job, so the
    request does the very same work (one enqueue) either way and its timing tells nothing."""
    await enqueue(queue, PASSWORD_RESET_JOB, email=email)


async def password_reset_email(session: AsyncSession, *, email: str, settings: Settings) -> emails.Message:
    """The job's side: a reset link for an account, or a note that no account uses the address."""
    # A transaction id either way: its commit then flushes the WAL like one that wrote a token
    # (a read-only commit skips the flush, ~0.5 ms faster: enough to tell the cases apart).
    await session.execute(select(func.pg_current_xact_id()))
    owner = select(User.id).where(User.email == email, User.is_active).scalar_subquery()
    await session.execute(
        update(AuthToken)
        .where(AuthToken.user_id == owner, AuthToken.purpose == "reset_password",
               AuthToken.used_at.is_(None))
        .values(used_at=_now())
    )
    token = new_opaque_token()
    issued = (await session.execute(
        insert(AuthToken)
        .from_select(["user_id", "purpose", "token_hash", "email", "expires_at"], select(
            User.id, literal("reset_password", String), literal(token_hash(token), LargeBinary),
            literal(email, String), literal(_now() + RESET_TTL, DateTime(timezone=True)),
        ).where(User.email == email, User.is_active))
        .returning(AuthToken.id)
    )).first()
    return (emails.password_reset(settings, to=email, token=token) if issued
            else emails.no_account(settings, to=email))


async def reset_password(
    session: AsyncSession, *, token: str, password: str, settings: Settings
) -> dict[str, Any]:
    """New password; every refresh family and every older access token stops working."""
    record = await _consume_email_token(session, token=token, purpose="reset_password")
    current = (await session.execute(select(User.email).where(User.id == record.user_id))).scalar_one_or_none()
    if current != record.email:  # sent to an address the account no longer has
        raise InvalidToken()
    password_hash = await hash_password(password, rounds=settings.bcrypt_rounds)
    await session.execute(
        update(User).where(User.id == record.user_id)
        .values(password_hash=password_hash, token_version=User.token_version + 1)
    )
    await _revoke_all_refresh(session, record.user_id)
    await _void_tokens(session, record.user_id, "change_email")
    await activity.record(session, user_id=record.user_id, type="account.password_reset",
                          message="Your password was reset; all sessions were signed out")
    revoke_sockets(session, record.user_id)
    return await _user_row(session, record.user_id)


async def get_profile(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    subscription, plan = await subscription_and_plan(session, user_id=user_id)
    return {
        "user": await _user_row(session, user_id),
        "credits": await get_credits(session, user_id=user_id),
        "subscription": subscription,
        "plan": plan,
    }


async def update_profile(
    session: AsyncSession, *, user_id: uuid.UUID, data: ProfileUpdateIn, settings: Settings,
    queue: ArqRedis, notify: bool = True,
) -> dict[str, Any]:
    """Change name, time zone, email (verification starts again) or password (others signed out)."""
    user = await session.get(User, user_id, with_for_update=True)
    if user is None:
        raise Unauthorized()
    email_change = data.email is not None and data.email != user.email
    if (data.new_password is not None or email_change) and not (
            data.current_password and await verify_password(data.current_password, user.password_hash)):
        raise ValidationFailed("Changing the password or email needs the current password",
                               details=[{"field": "current_password", "message": "missing or incorrect"}])
    result: dict[str, Any] = {}
    if data.new_password is not None:
        user.password_hash = await hash_password(data.new_password, rounds=settings.bcrypt_rounds)
        user.token_version += 1
        await _revoke_all_refresh(session, user.id)
        await _void_tokens(session, user.id, "change_email")  # a move asked before it is off
        revoke_sockets(session, user.id)
        await activity.record(session, user_id=user.id, type="account.password_changed",
                              message="Your password was changed; other sessions were signed out")
    if data.display_name is not None:
        user.display_name = data.display_name
    if "timezone" in data.model_fields_set:
        user.timezone = data.timezone
    if email_change:
        assert data.email is not None
        # Nothing changes until the new address opens its link; the answer is the same whether
        # or not the address has an account (only its inbox learns which).
        # The same writes either way (a token, earlier ones voided), so nothing tells them apart.
        token = await _issue_email_token(session, user_id=user.id, email=data.email,
                                         purpose="change_email", ttl=VERIFY_TTL)
        taken = (await session.execute(select(func.count()).select_from(User).where(User.email == data.email))).scalar_one()
        if notify:
            _send_later(session, queue, emails.email_change_taken(settings, to=data.email) if taken
                        else emails.confirm_email_change(settings, to=data.email, token=token))
        result["pending_email"] = data.email
    await session.flush()
    if data.new_password is not None:
        fresh = await _start_session(session, user_id=user.id, token_version=user.token_version,
                                     settings=settings)
        result["tokens"] = fresh.body()["tokens"]
    result["user"] = await _user_row(session, user.id)
    return result
