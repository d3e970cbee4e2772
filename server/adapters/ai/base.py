"""The AI provider interface used by avatars and generation (grok and local implement it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from server.adapters.errors import UpstreamError

VideoState = Literal["pending", "done", "failed", "expired"]


# What a failed AI call means for a generation (jobs read `code`, `transient`, `user_message`).
CREDENTIALS = "provider_credentials"  # our key refused: permanent, hidden from users, logged
QUOTA_EXHAUSTED = "provider_quota_exhausted"  # team credits / spending limit: permanent, hidden
MODEL_MISSING = "provider_model_missing"  # a configured model is unknown there: permanent, hidden
RATE_LIMITED = "provider_rate_limited"  # 429 rate limit: transient
UNAVAILABLE = "provider_unavailable"  # 5xx, timeouts, broken answers: transient
CONTENT_MODERATED = "content_moderated"  # the provider's moderation blocked it: permanent
REJECTED = "provider_rejected"  # the provider refused the request itself (400/404/422): permanent
# The user-facing text of errors that must not show the provider's own message.
SERVICE_TROUBLE = "The AI service is temporarily unavailable; please try again later"


class ProviderError(UpstreamError):
    """An AI provider call failed; `code` is one of the codes above."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None,
                 code: str | None = None, user_message: str | None = None) -> None:
        super().__init__(message, transient=transient, status=status,
                         code=code or (UNAVAILABLE if transient else REJECTED),
                         user_message=user_message)


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes  # the image itself (copied from the provider at once: its URLs are temporary)
    content_type: str = "image/jpeg"
    revised_prompt: str | None = None


@dataclass(frozen=True)
class VideoStatus:
    state: VideoState
    progress: int | None = None  # 0..100 when the provider tells
    data: bytes | None = None  # the MP4, downloaded, when state == "done"
    error: str | None = None
    code: str | None = None  # an ERROR code of base.py when state is failed or expired


@dataclass(frozen=True)
class AvatarSpec:
    name: str
    age: int
    seed: int
    description: str | None = None
    appearance: dict[str, Any] = field(default_factory=dict)
    personality: str | None = None
    style: str | None = None


class AIProvider(Protocol):
    async def character_profile(self, avatar: AvatarSpec) -> dict[str, Any]:
        """A structured profile: physical_traits, style, personality, and a fixed `identity`
        sentence that is put in every prompt of this avatar for consistency."""

    async def enhance_prompt(
        self, *, prompt: str, kind: Literal["image", "video"], profile: dict[str, Any] | None
    ) -> str:
        """The user's prompt rewritten for the image/video model, with the avatar's identity."""

    async def generate_image(
        self, *, prompt: str, seed: int, aspect_ratio: str = "1:1", quality: str = "standard"
    ) -> GeneratedImage: ...

    async def start_video(
        self, *, prompt: str, seed: int, duration_seconds: int, aspect_ratio: str = "16:9",
        image_url: str | None = None, image_data: bytes | None = None, quality: str = "standard",
    ) -> str:
        """Start an asynchronous video generation; returns the provider's request id.

        A source image to animate comes as a URL the provider can fetch (`image_url`)
        and as bytes (`image_data`) for providers that cannot reach our storage."""

    async def poll_video(self, request_id: str) -> VideoStatus: ...

    async def check_models(self) -> dict[str, Any]:
        """Ask the provider whether the configured models exist; never raises."""

    def model_status(self) -> dict[str, Any]:
        """The last check_models result (for /health), or {"status": "unchecked"}."""

    async def aclose(self) -> None: ...
