"""Email delivery: SMTP when SMTP_HOST is set, else console + outbox folder."""

from __future__ import annotations

from server.adapters.email.base import Mailer, OutgoingEmail
from server.config import Settings


def make_mailer(settings: Settings) -> Mailer:
    if settings.smtp_host:
        from server.adapters.email.smtp import SmtpMailer

        return SmtpMailer(settings)
    from server.adapters.email.outbox import OutboxMailer

    return OutboxMailer(settings.data_dir / "outbox")


__all__ = ["Mailer", "OutgoingEmail", "make_mailer"]
