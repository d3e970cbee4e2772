"""S3 storage against moto's S3 server over real HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
import pytest

from server.adapters.storage import make_storage
from server.adapters.storage.base import avatar_thumbnail_key
from server.adapters.storage.s3 import S3Storage
from server.errors import NotFound
from tests.support.s3 import PresignGate, create_bucket, moto_s3, s3_settings


@pytest.fixture(scope="module")
def moto_endpoint():
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
async def s3(settings, moto_endpoint):
    gate = await PresignGate(moto_endpoint).start()
    configured = s3_settings(settings, gate.url)
    create_bucket(moto_endpoint, configured.aws_s3_bucket)
    storage = make_storage(configured)
    assert isinstance(storage, S3Storage)
    yield storage
    await storage.aclose()
    await gate.close()


async def test_put_get_delete_and_presigned_download(s3) -> None:
    key = avatar_thumbnail_key(uuid.uuid4(), uuid.uuid4())
    await s3.put(key, b"\xff\xd8\xffjpeg-bytes", content_type="image/jpeg")
    assert await s3.get(key) == b"\xff\xd8\xffjpeg-bytes"
    url = await s3.signed_url(key, expires_in=60)
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "image/jpeg"
            assert await resp.read() == b"\xff\xd8\xffjpeg-bytes"
        plain = url.split("?", 1)[0]
        async with http.get(plain) as resp:
            assert resp.status == 403  # objects are private: no signature, no bytes
        tampered = url.replace(key, key.replace("thumbnail_", "thumbnail_x"))
        async with http.get(tampered) as resp:
            assert resp.status == 403
    await s3.delete(key)
    await s3.delete(key)  # deleting twice is fine
    with pytest.raises(NotFound):
        await s3.get(key)
    with pytest.raises(NotFound):
        await s3.open_signed(key, expires="1", sig="x")


async def test_expired_presigned_url_is_refused(s3) -> None:
    key = f"content/{uuid.uuid4()}/image_{uuid.uuid4()}_{int(time.time())}.jpg"
    await s3.put(key, b"bytes", content_type="image/jpeg")
    url = await s3.signed_url(key, expires_in=1)
    await asyncio.sleep(1.2)
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 403
        assert "expired" in (await resp.text()).lower()
