"""Files under the data dir, served by the app at HMAC-signed, expiring URLs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import mimetypes
import os
import time
from pathlib import Path
from urllib.parse import quote

from server.config import Settings
from server.errors import Forbidden, NotFound

FILES_PREFIX = "/files/"


class LocalStorage:
    def __init__(self, settings: Settings) -> None:
        self.root = (Path(settings.data_dir) / "files").resolve()
        self.base_url = settings.base_url
        self.ttl = settings.signed_url_ttl_seconds
        # A key of its own, derived so a file signature can never pass for a JWT or vice versa.
        self._key = hmac.new(settings.jwt_secret.get_secret_value().encode(), b"lustify-files",
                             hashlib.sha256).digest()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not key or key.startswith("/") or not path.is_relative_to(self.root):
            raise NotFound()
        return path

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    async def put(self, key: str, data: bytes, *, content_type: str) -> None:
        await asyncio.to_thread(self._write, self._path(key), data)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError as exc:
            raise NotFound() from exc

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    def _signature(self, key: str, expires: int) -> str:
        return hmac.digest(self._key, f"{key}\n{expires}".encode(), "sha256").hex()

    async def signed_url(self, key: str, *, expires_in: int | None = None) -> str:
        expires = int(time.time()) + (expires_in or self.ttl)
        return f"{self.base_url}{FILES_PREFIX}{quote(key)}?expires={expires}&sig={self._signature(key, expires)}"

    async def open_signed(self, key: str, *, expires: str, sig: str) -> tuple[bytes, str]:
        """The bytes and content type behind a signed URL; 403 if altered or expired."""
        try:
            expires_at = int(expires)
        except ValueError as exc:
            raise Forbidden("This file link is invalid") from exc
        # As bytes: compare_digest refuses str with characters outside ASCII (a 500, not a 403).
        if not hmac.compare_digest(self._signature(key, expires_at).encode(), (sig or "").encode()):
            raise Forbidden("This file link is invalid")
        if expires_at < time.time():
            raise Forbidden("This file link has expired")
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        return await self.get(key), content_type

    async def aclose(self) -> None:
        return None
