"""HTTP routes of /api/auth."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server import keys
from server.auth import service
from server.auth.current_user import CurrentUser
from server.auth.schemas import (
    AcceptedOut,
    AuthOut,
    ForgotPasswordIn,
    LoginIn,
    ProfileOut,
    ProfileUpdateIn,
    ProfileUpdateOut,
    RefreshIn,
    RegisterIn,
    ResetPasswordIn,
    TokensOut,
    UserOnlyOut,
)
from server.routing import Routes

routes = Routes(tags=("auth",))
AUTH_MAX_BODY = 16 * 1024  # the largest auth body (two 1,024-character passwords) is under 13 KB


def _meta(request: web.Request) -> dict[str, str | None]:
    limiter = request.app[keys.resources].rate_limiter
    return {"user_agent": request.headers.get("User-Agent", "")[:255] or None,
            "ip": limiter.client_ip(request)[:64]}


async def _limit_email(request: web.Request, email: str, action: str) -> None:
    await request.app[keys.resources].rate_limiter.hit_account(email, action)


async def _may_mail(request: web.Request, email: str, *, user_id: object = None) -> bool:
    limiter = request.app[keys.resources].rate_limiter
    return await limiter.mailbox_allows(email, asked_by=limiter.requester(request, user_id=user_id))


@routes.post("/api/auth/register", body=RegisterIn, response=AcceptedOut, status=202, auth=False,
             rate_limit="auth", max_body=AUTH_MAX_BODY)
async def register(request: web.Request, body: RegisterIn) -> dict:
    """Create an account (18+) and email a verification link; the same answer for a known email."""
    await _limit_email(request, body.email, "register")
    res = request.app[keys.resources]
    await service.register(res.sessionmaker, data=body, settings=res.settings, queue=res.queue,
                           notify=await _may_mail(request, body.email))
    return {"status": "accepted",
            "message": "Check your inbox: we sent a verification link, then sign in"}


@routes.post("/api/auth/login", body=LoginIn, response=AuthOut, auth=False, rate_limit="auth",
             errors=(401,), max_body=AUTH_MAX_BODY)
async def login(request: web.Request, body: LoginIn) -> dict:
    """Sign in with email and password."""
    await _limit_email(request, body.email, "login")
    res = request.app[keys.resources]
    signed_in = await service.login(res.sessionmaker, email=body.email, password=body.password,
                                    settings=res.settings, meta=_meta(request))
    return signed_in.body()


@routes.post("/api/auth/refresh", body=RefreshIn, response=AuthOut, auth=False, errors=(401,),
             max_body=AUTH_MAX_BODY)
async def refresh(request: web.Request, session: AsyncSession, body: RefreshIn) -> dict:
    """Exchange a refresh token for new tokens (the old one is spent)."""
    res = request.app[keys.resources]
    rotated = await service.refresh(session, refresh_token=body.refresh_token, settings=res.settings,
                                    redis=res.redis, meta=_meta(request))
    return rotated.body()


@routes.post("/api/auth/logout", body=RefreshIn, status=204, max_body=AUTH_MAX_BODY)
async def logout(request: web.Request, session: AsyncSession, user: CurrentUser, body: RefreshIn) -> None:
    """Sign out this session: its refresh tokens, access tokens and sockets, at once."""
    res = request.app[keys.resources]
    await service.logout(session, user_id=user.id, session_id=user.session_id,
                         refresh_token=body.refresh_token, redis=res.redis, settings=res.settings)


@routes.get("/api/auth/verify-email/{token}", response=UserOnlyOut, auth=False, rate_limit="auth",
            errors=(400, 409))
async def verify_email(request: web.Request, session: AsyncSession) -> dict:
    """Confirm the email address (or an email change) from the link sent to it."""
    res = request.app[keys.resources]
    user = await service.verify_email(session, token=request.match_info["token"], settings=res.settings,
                                      queue=res.queue)
    return {"user": user}


@routes.post("/api/auth/resend-verification", response=AcceptedOut, status=202, rate_limit="auth",
             max_body=AUTH_MAX_BODY)
async def resend_verification(request: web.Request, session: AsyncSession, user: CurrentUser) -> dict:
    """Send a new verification email."""
    res = request.app[keys.resources]
    if await _may_mail(request, user.email, user_id=user.id):
        await service.resend_verification(session, user_id=user.id, settings=res.settings, queue=res.queue)
    return {"status": "accepted", "message": "If the address is unverified, a new email is on its way"}


@routes.post("/api/auth/forgot-password", body=ForgotPasswordIn, response=AcceptedOut, status=202,
             auth=False, rate_limit="auth", max_body=AUTH_MAX_BODY)
async def forgot_password(request: web.Request, body: ForgotPasswordIn) -> dict:
    """Email a password reset link (202 whether or not the account exists)."""
    await _limit_email(request, body.email, "reset")
    if await _may_mail(request, body.email):
        await service.forgot_password(email=body.email, queue=request.app[keys.resources].queue)
    return {"status": "accepted", "message": "If an account exists for this email, a reset link is on its way"}


@routes.post("/api/auth/reset-password", body=ResetPasswordIn, response=UserOnlyOut, auth=False,
             rate_limit="auth", max_body=AUTH_MAX_BODY)
async def reset_password(request: web.Request, session: AsyncSession, body: ResetPasswordIn) -> dict:
    """Set a new password with the emailed token; signs out every session."""
    res = request.app[keys.resources]
    user = await service.reset_password(session, token=body.token, password=body.password,
                                        settings=res.settings)
    return {"user": user, "message": "Password changed; sign in again"}


@routes.get("/api/auth/profile", response=ProfileOut)
async def get_profile(session: AsyncSession, user: CurrentUser) -> dict:
    """The caller's account, credits, subscription and plan."""
    return await service.get_profile(session, user_id=user.id)


@routes.put("/api/auth/profile", body=ProfileUpdateIn, response=ProfileUpdateOut, max_body=AUTH_MAX_BODY)
async def update_profile(request: web.Request, session: AsyncSession, user: CurrentUser,
                         body: ProfileUpdateIn) -> dict:
    """Change display name, time zone, email or password."""
    res = request.app[keys.resources]
    moving = body.email is not None and body.email != user.email
    notify = await _may_mail(request, body.email, user_id=user.id) if moving else True
    return await service.update_profile(session, user_id=user.id, data=body, settings=res.settings, notify=notify,
                                        queue=res.queue)


__all__ = ["routes", "TokensOut"]
