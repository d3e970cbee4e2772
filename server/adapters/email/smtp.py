"""SMTP delivery with aiosmtplib."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from server.adapters.email.base import OutgoingEmail
from server.config import Settings


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, email: OutgoingEmail) -> None:
        message = EmailMessage()
        message["From"] = self.settings.smtp_from
        message["To"] = email.to
        message["Subject"] = email.subject
        message.set_content(email.text)
        password = self.settings.smtp_password.get_secret_value() if self.settings.smtp_password else None
        await aiosmtplib.send(
            message,
            hostname=self.settings.smtp_host,
            port=self.settings.smtp_port,
            username=self.settings.smtp_username,
            password=password,
            start_tls=self.settings.smtp_starttls,
            timeout=20,
        )
