"""File storage: S3 (aiobotocore) when AWS_S3_BUCKET is set, else a local folder at signed URLs."""

from __future__ import annotations

from server.adapters.storage.base import Storage
from server.config import Settings


def make_storage(settings: Settings) -> Storage:
    if settings.aws_s3_bucket:
        from server.adapters.storage.s3 import S3Storage

        return S3Storage(settings)
    from server.adapters.storage.local import LocalStorage

    return LocalStorage(settings)


__all__ = ["Storage", "make_storage"]
