"""The texts of account emails. Links open the studio's pages (or FRONTEND_URL's) with the
token in the fragment, which browsers never send to a server; the API form follows."""

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
    lines += [f"{settings.studio_url}/verify-email#token={quote(token)}", "",
              "Or call the API directly:", api, "", "If you did not sign up, ignore this email."]
    return Message(to, "Verify your Lustify email address", "\n".join(lines) + "\n")


def password_reset(settings: Settings, *, to: str, token: str) -> Message:
    lines = ["Someone asked to reset the password of this Lustify account.", ""]
    lines += ["Choose a new password here (valid for 1 hour, usable once):",
              f"{settings.studio_url}/reset-password#token={quote(token)}", ""]
    lines += [f"Reset token (valid for 1 hour, usable once): {token}",
              f"API: POST {settings.base_url}/api/auth/reset-password "
              '{"token": "<the token>", "password": "<new password>"}', "",
              "If it was not you, ignore this email; your password stays as it is."]
    return Message(to, "Reset your Lustify password", "\n".join(lines) + "\n")


def account_exists(settings: Settings, *, to: str) -> Message:
    """To a known address someone tried to sign up with again (the API answers as for a new one)."""
    lines = ["Someone tried to create a Lustify account with this email address, but it already has one.",
             "", "If it was you, sign in instead. Forgot your password? Reset it with:",
             f"POST {settings.base_url}/api/auth/forgot-password {{\"email\": \"{to}\"}}"]
    if settings.frontend_url:
        lines += [f"or at {settings.frontend_url.rstrip('/')}/forgot-password"]
    lines += ["", "If it was not you, ignore this email; nothing changed."]
    return Message(to, "You already have a Lustify account", "\n".join(lines) + "\n")


def no_account(settings: Settings, *, to: str) -> Message:
    """To an address without an account that a password reset was asked for."""
    lines = ["Someone asked to reset the password of a Lustify account for this email address,",
             "but no account uses it. If it was you, you may have signed up with another address.",
             "", "If it was not you, ignore this email."]
    return Message(to, "Reset your Lustify password", "\n".join(lines) + "\n")


def confirm_email_change(settings: Settings, *, to: str, token: str) -> Message:
    """To the new address of an email change: the change happens when this link is opened."""
    api = f"{settings.base_url}/api/auth/verify-email/{quote(token)}"
    lines = ["Someone asked to move their Lustify account to this email address.", "",
             "To confirm, open this link (valid for 24 hours, usable once):",
             f"{settings.studio_url}/verify-email#token={quote(token)}", "",
             "Or call the API directly:", api, "", "If it was not you, ignore this email; nothing changes."]
    return Message(to, "Confirm your new Lustify email address", "\n".join(lines) + "\n")


def email_change_taken(settings: Settings, *, to: str) -> Message:
    """To an address that already has an account, named as the new address of another one."""
    lines = ["Someone asked to move a Lustify account to this email address, but it already has",
             "an account of its own, so nothing changed.", "",
             "If it was you, sign in with this address instead. If it was not, ignore this email."]
    return Message(to, "Your Lustify email address", "\n".join(lines) + "\n")


def email_changed(settings: Settings, *, to: str, new_email: str) -> Message:
    """To the old address once the account has moved (its owner hears of a move they did not ask for)."""
    lines = [f"The email address of your Lustify account is now {new_email}.",
             "This address no longer signs in to it.", "",
             "If you did not ask for this, reply to this email at once so we can restore your account."]
    return Message(to, "Your Lustify email address changed", "\n".join(lines) + "\n")
