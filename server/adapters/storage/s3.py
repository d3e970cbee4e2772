"""Private objects in S3 (or an S3-compatible store at AWS_ENDPOINT_URL), read through presigned URLs."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from server.config import Settings
from server.errors import NotFound

MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        if not settings.aws_s3_bucket:
            raise ValueError("AWS_S3_BUCKET is required for S3 storage")
        self.bucket = settings.aws_s3_bucket
        self.ttl = settings.signed_url_ttl_seconds
        self._client_kwargs: dict[str, Any] = {
            "region_name": settings.aws_region,
            "endpoint_url": settings.aws_endpoint_url or None,
            "config": AioConfig(
                signature_version="s3v4",
                # Path-style addressing is what MinIO and most compatible stores expect.
                s3={"addressing_style": "path" if settings.aws_endpoint_url else "auto"},
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=10, read_timeout=60,
            ),
        }
        if settings.aws_access_key_id and settings.aws_secret_access_key:
            self._client_kwargs["aws_access_key_id"] = settings.aws_access_key_id.get_secret_value()
            self._client_kwargs["aws_secret_access_key"] = settings.aws_secret_access_key.get_secret_value()
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r})"

    async def _s3(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._stack.enter_async_context(
                        get_session().create_client("s3", **self._client_kwargs)
                    )
        return self._client

    async def put(self, key: str, data: bytes, *, content_type: str) -> None:
        s3 = await self._s3()
        await s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                            CacheControl="private, max-age=300")

    async def get(self, key: str) -> bytes:
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING:
                raise NotFound() from exc
            raise
        async with response["Body"] as stream:
            return await stream.read()

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=key)  # S3 answers 204 for missing keys too

    async def signed_url(self, key: str, *, expires_in: int | None = None) -> str:
        s3 = await self._s3()
        return await s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in or self.ttl
        )

    async def open_signed(self, key: str, *, expires: str, sig: str) -> tuple[bytes, str]:
        raise NotFound()  # presigned S3 URLs point at the bucket, never at this app

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None
