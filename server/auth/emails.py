"""The texts of account emails. Links point at the frontend when FRONTEND_URL is set, and
always include the API form, so `lustify dev` users can follow them with curl."""

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
    api = f"{settings.base_url}/api/auth/verify-email/{quote(token)}"
    lines = ["Welcome to Lustify!", "",
             "Confirm your email address by opening this link (valid for 24 hours, usable once):"]
    if settings.frontend_url:
        lines += [f"{settings.frontend_url.rstrip('/')}/verify-email?token={quote(token)}", "",
                  "Or call the API directly:"]
    lines += [api, "", "If you did not sign up, ignore this email."]
    return Message(to, "Verify your Lustify email address", "\n".join(lines) + "\n")


def password_reset(settings: Settings, *, to: str, token: str) -> Message:
    lines = ["Someone asked to reset the password of this Lustify account.", ""]
    if settings.frontend_url:
        lines += ["Choose a new password here (valid for 1 hour, usable once):",
                  f"{settings.frontend_url.rstrip('/')}/reset-password?token={quote(token)}", ""]
    lines += [f"Reset token (valid for 1 hour, usable once): {token}",
              f"API: POST {settings.base_url}/api/auth/reset-password "
              '{"token": "<the token>", "password": "<new password>"}', "",
              "If it was not you, ignore this email; your password stays as it is."]
    return Message(to, "Reset your Lustify password", "\n".join(lines) + "\n")
