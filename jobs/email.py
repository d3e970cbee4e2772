"""Email delivery job, retried with backoff when the mail server is unreachable."""

from __future__ import annotations

import logging
from typing import Any

from arq import Retry
from arq.worker import func

from db.session import transaction
from server.adapters.email import OutgoingEmail
from server.auth import service as auth_service

log = logging.getLogger(__name__)
MAX_TRIES = 6


async def send_email(ctx: dict[str, Any], *, to: str, subject: str, text: str) -> None:
    try:
        await ctx["res"].mailer.send(OutgoingEmail(to=to, subject=subject, text=text))
    except Exception as exc:
        tries = ctx.get("job_try", 1)
        if tries >= MAX_TRIES:
            log.error("giving up on email to %s after %d tries: %r", to, tries, exc)
            raise
        log.warning("email to %s failed (try %d), retrying: %r", to, tries, exc)
        raise Retry(defer=min(2 ** tries, 60)) from exc


async def send_password_reset(ctx: dict[str, Any], *, email: str) -> None:
    """A reset link if the address has an account, else a note that none uses it."""
    res = ctx["res"]
    async with transaction(res.sessionmaker) as session:
        message = await auth_service.password_reset_email(session, email=email, settings=res.settings)
    await send_email(ctx, to=message.to, subject=message.subject, text=message.text)


EMAIL_JOB = func(send_email, name="send_email", max_tries=MAX_TRIES)
PASSWORD_RESET_JOB = func(send_password_reset, name=auth_service.PASSWORD_RESET_JOB, max_tries=MAX_TRIES)
