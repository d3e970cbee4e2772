"""The file storage interface (s3 and local implement it) and the key layout."""

from __future__ import annotations

import uuid
from typing import Protocol


class Storage(Protocol):
    async def put(self, key: str, data: bytes, *, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""

    async def signed_url(self, key: str, *, expires_in: int | None = None) -> str:
        """A URL that reads this private object until it expires."""

    async def open_signed(self, key: str, *, expires: str, sig: str) -> tuple[bytes, str]:
        """Serve a URL made by `signed_url` when the app itself serves files (local);
        stores whose URLs point elsewhere (S3) raise NotFound."""

    async def aclose(self) -> None: ...


def avatar_thumbnail_key(user_id: uuid.UUID, avatar_id: uuid.UUID) -> str:
    return f"avatars/{user_id}/thumbnail_{avatar_id}.jpg"


def content_image_key(user_id: uuid.UUID, content_id: uuid.UUID, ts: int) -> str:
    return f"content/{user_id}/image_{content_id}_{ts}.jpg"


def content_video_key(user_id: uuid.UUID, content_id: uuid.UUID, ts: int) -> str:
    return f"content/{user_id}/video_{content_id}_{ts}.mp4"


def content_video_thumbnail_key(user_id: uuid.UUID, content_id: uuid.UUID, ts: int) -> str:
    return f"content/{user_id}/video_{content_id}_{ts}_thumb.jpg"
