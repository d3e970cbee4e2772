"""The texts of account emails; links point at the frontend, with the API link for curl."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from server.config import Settings


@dataclass(frozen=True)
class Message:
    to: str
    subject: str
    text: str


def verification(settings: Settings, *, to: str, token: str) -> Message:
    link = f"{settings.frontend_url.rstrip('/')}/verify-email?token={quote(token)}"
    api = f"{settings.base_url}/api/auth/verify-email/{quote(token)}"
    return Message(to, "Verify your Lustify email address", (
        "Welcome to Lustify!\n\n"
        f"Confirm your email address by opening this link (valid for 24 hours):\n{link}\n\n"
        f"Or call the API directly:\n{api}\n\n"
        "If you did not sign up, ignore this email.\n"
    ))


def password_reset(settings: Settings, *, to: str, token: str) -> Message:
    link = f"{settings.frontend_url.rstrip('/')}/reset-password?token={quote(token)}"
    return Message(to, "Reset your Lustify password", (
        "Someone asked to reset the password of this Lustify account.\n\n"
        f"Choose a new password here (valid for 1 hour, usable once):\n{link}\n\n"
        f"API token for POST /api/auth/reset-password: {token}\n\n"
        "If it was not you, ignore this email; your password stays as it is.\n"
    ))
