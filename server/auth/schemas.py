"""Auth request and response bodies."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator

from server.schemas import Input, Output, known_time_zone

_EMAIL = re.compile(r"^[^@\s\x00-\x1f]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
MIN_AGE = 18
# Passwords are taken exactly as typed: surrounding spaces are part of them.
Password = Annotated[str, StringConstraints(strip_whitespace=False, min_length=8, max_length=128)]
AnyPassword = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1, max_length=1024)]


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def normalize_email(value: str) -> str:
    value = value.strip().lower()
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError("not a valid email address")
    return value


def age_on(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


class EmailField(Input):
    email: str = Field(max_length=320)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value)


class RegisterIn(EmailField):
    password: Password
    display_name: str | None = Field(None, min_length=1, max_length=100)
    date_of_birth: date

    @field_validator("date_of_birth", mode="before")
    @classmethod
    def _written_as_a_date(cls, value: Any) -> Any:
        # pydantic would read a number as a Unix time: only "YYYY-MM-DD" says what the user meant.
        if isinstance(value, datetime) or not (
                isinstance(value, date) or (isinstance(value, str) and _ISO_DATE.fullmatch(value))):
            raise ValueError("must be a date written YYYY-MM-DD")
        return value

    @field_validator("date_of_birth")
    @classmethod
    def _adult(cls, value: date) -> date:
        today = date.today()
        if value > today or age_on(value, today) < MIN_AGE:
            raise ValueError(f"you must be at least {MIN_AGE} years old")
        if value.year < 1900:
            raise ValueError("not a plausible date of birth")
        return value


class LoginIn(Input):
    # Any string: a malformed address is just an unknown one (401, like a wrong password).
    email: str = Field(max_length=320)
    password: AnyPassword

    @field_validator("email")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return value.strip().lower()


class RefreshIn(Input):
    refresh_token: str = Field(min_length=1, max_length=512)


class ForgotPasswordIn(EmailField):
    pass


class ResetPasswordIn(Input):
    token: str = Field(min_length=1, max_length=512)
    password: Password


class ProfileUpdateIn(Input):
    display_name: str | None = Field(None, min_length=1, max_length=100)
    email: str | None = Field(None, max_length=320)
    timezone: str | None = Field(None, max_length=64)
    current_password: AnyPassword | None = None
    new_password: Password | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return normalize_email(value) if value is not None else None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return known_time_zone(value)


class UserOut(Output):
    id: uuid.UUID
    email: str
    display_name: str | None
    email_verified: bool
    created_at: datetime
    timezone: str | None = None


class TokensOut(Output):
    access_token: str
    refresh_token: str
    token_type: str = "Bearer"
    expires_in: int


class AuthOut(TokensOut):
    user: UserOut
    tokens: TokensOut


class UserOnlyOut(Output):
    user: UserOut


class ProfileOut(Output):
    user: UserOut
    credits: dict[str, Any]
    subscription: dict[str, Any] | None
    plan: dict[str, Any]


class ProfileUpdateOut(Output):
    user: UserOut
    tokens: TokensOut | None = None
    # An email change waits for the link sent to the new address (the same answer whether or
    # not that address already has an account: no enumeration).
    pending_email: str | None = None


class AcceptedOut(Output):
    status: str = "accepted"
    message: str
