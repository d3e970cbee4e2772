"""Schema building blocks shared by every domain: strict inputs, pages."""

from __future__ import annotations

import functools
import zoneinfo
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

T = TypeVar("T")


@functools.cache
def _time_zones() -> frozenset[str]:
    # The IANA names, without the system aliases and alternative trees that zoneinfo opens
    # but not every PostgreSQL build knows.
    return frozenset(
        name for name in zoneinfo.available_timezones()
        if name not in ("localtime", "posixrules", "Factory") and not name.startswith(("posix/", "right/"))
    )


def known_time_zone(value: str | None) -> str | None:
    """An IANA time zone name, or ValueError (for field validators)."""
    if value is not None and value not in _time_zones():
        raise ValueError("unknown time zone")
    return value


class Input(BaseModel):
    """Request bodies: unknown fields are refused (no mass assignment)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="before")
    @classmethod
    def _within_documented_length(cls, value: Any, info: ValidationInfo) -> Any:
        # Stripping comes before pydantic's own length check; the documented maxLength is of
        # the text as sent, so a longer one is refused even if it is mostly whitespace.
        if isinstance(value, str) and info.field_name is not None:
            limit = _max_lengths(cls).get(info.field_name)
            if limit is not None and len(value) > limit:
                raise ValueError(f"String should have at most {limit} characters")
        return value


@functools.cache
def _max_lengths(model: type[BaseModel]) -> dict[str, int]:
    return {name: item.max_length for name, field in model.model_fields.items()
            for item in field.metadata if getattr(item, "max_length", None) is not None}


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    page: int = Field(1, ge=1, le=100_000)
    limit: int = Field(20, ge=1, le=100)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    page: int
    limit: int
