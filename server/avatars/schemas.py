"""Request and response models of /api/avatars."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator, model_validator

from server.schemas import Input, Page, PageQuery

AvatarStatus = Literal["creating", "ready", "failed"]
TRAIT_LIMIT = 1_000_000  # numeric traits (height, weight...): real values, stored and sent back as given
# Strict: "6" stays a string and true a boolean, each kept as the type it was sent as.
Trait = (StrictBool
         | Annotated[int, Field(strict=True, ge=-TRAIT_LIMIT, le=TRAIT_LIMIT)]
         | Annotated[float, Field(strict=True, ge=-TRAIT_LIMIT, le=TRAIT_LIMIT, allow_inf_nan=False)]
         | Annotated[str, Field(max_length=200)])
Age = Annotated[int, Field(strict=True, ge=18, le=120, description="Avatars are adults: 18 or over")]


def _raw_trait_lengths(value: Any) -> Any:
    """Before stripping: the documented limits are of the text as sent."""
    if isinstance(value, dict):
        for key, trait in value.items():
            if isinstance(key, str) and len(key) > 50:
                raise ValueError("trait names are 1..50 characters")
            if isinstance(trait, str) and len(trait) > 200:
                raise ValueError(f"trait {key!r} is longer than 200 characters")
    return value


def _check_appearance(value: dict[str, Trait] | None) -> dict[str, Trait] | None:
    if value is None:
        return value
    if len(value) > 30:
        raise ValueError("at most 30 appearance traits")
    for key, trait in value.items():
        if not key.strip() or len(key) > 50:
            raise ValueError("trait names are 1..50 characters")
        if isinstance(trait, str) and len(trait) > 200:
            raise ValueError(f"trait {key!r} is longer than 200 characters")
    return value


class AvatarCreateIn(Input):
    name: str = Field(min_length=1, max_length=100)
    age: Age
    description: str | None = Field(None, max_length=2000)
    appearance: dict[str, Trait] | None = None
    personality: str | None = Field(None, max_length=1000)
    style: str | None = Field(None, max_length=500)

    _appearance = field_validator("appearance")(_check_appearance)
    _appearance_raw = field_validator("appearance", mode="before")(_raw_trait_lengths)


class AvatarUpdateIn(Input):
    name: str | None = Field(None, min_length=1, max_length=100)
    age: Age | None = None
    description: str | None = Field(None, max_length=2000)
    appearance: dict[str, Trait] | None = None
    personality: str | None = Field(None, max_length=1000)
    style: str | None = Field(None, max_length=500)

    _appearance = field_validator("appearance")(_check_appearance)
    _appearance_raw = field_validator("appearance", mode="before")(_raw_trait_lengths)

    @model_validator(mode="after")
    def _something_to_change(self) -> AvatarUpdateIn:
        if not self.model_fields_set:
            raise ValueError("send at least one field to change")
        if "name" in self.model_fields_set and self.name is None:
            raise ValueError("name cannot be null")
        if "age" in self.model_fields_set and self.age is None:
            raise ValueError("age cannot be null")
        return self


class AvatarListQuery(PageQuery):
    search: str | None = Field(None, max_length=100)


class AvatarOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str | None
    age: int
    appearance: dict[str, Any]
    personality: str | None
    style: str | None
    profile: dict[str, Any] | None
    seed: int
    status: AvatarStatus
    error: str | None
    thumbnail_url: str | None
    content_count: int
    created_at: datetime
    updated_at: datetime


class AvatarPage(Page[AvatarOut]):
    pass


class AvatarLimitOut(BaseModel):
    used: int
    limit: int
    remaining: int
    plan_id: str


class AvatarUsage(BaseModel):
    id: uuid.UUID
    name: str
    content_count: int


class AvatarStatsOut(BaseModel):
    total: int
    by_status: dict[str, int]
    content_total: int
    most_used: list[AvatarUsage]
    limit: AvatarLimitOut
