"""The embedded-default adapters: the offline AI renderer and local storage at signed URLs."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from urllib.parse import urlsplit

from PIL import Image

from server.adapters.ai.base import AvatarSpec
from server.adapters.ai.local import LocalProvider, _palette
from server.adapters.storage.local import LocalStorage
from server.media import video_first_frame_jpeg
from tests.support.api import Api


def _skin_pixel(jpeg: bytes) -> tuple[int, int, int]:
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    width, height = image.size
    unit = min(width, height) / 10
    return image.getpixel((width // 2, int(height * 0.55 - unit)))


def _close(a, b, tolerance=12) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


async def test_local_images_are_real_and_consistent_per_seed(settings) -> None:
    ai = LocalProvider(settings)
    first = await ai.generate_image(prompt="on a beach at sunset", seed=42)
    second = await ai.generate_image(prompt="in a neon city at night", seed=42, aspect_ratio="16:9", quality="hd")
    other = await ai.generate_image(prompt="on a beach at sunset", seed=43)
    assert Image.open(io.BytesIO(first.data)).format == "JPEG"
    assert Image.open(io.BytesIO(second.data)).size == (1024, 576)
    assert first.data != second.data
    skin = _palette(42)[3]
    assert _close(_skin_pixel(first.data), skin) and _close(_skin_pixel(second.data), skin)
    assert not _close(_skin_pixel(other.data), skin)
    again = await ai.generate_image(prompt="on a beach at sunset", seed=42)
    assert again.data == first.data  # deterministic


async def test_local_profile_is_deterministic_and_keeps_given_traits(settings) -> None:
    ai = LocalProvider(settings)
    spec = AvatarSpec(name="Mara", age=27, seed=7, appearance={"hair": "teal"}, style="gothic")
    profile = await ai.character_profile(spec)
    assert profile == await ai.character_profile(spec)
    assert "Mara" in profile["identity"] and "27" in profile["identity"] and "teal" in profile["identity"]
    assert profile["style"] == "gothic"
    enhanced = await ai.enhance_prompt(prompt="reading in a cafe", kind="image", profile=profile)
    assert profile["identity"] in enhanced and "reading in a cafe" in enhanced


async def test_local_video_is_a_real_mp4_after_the_delay(settings) -> None:
    ai = LocalProvider(settings.model_copy(update={"local_ai_delay_ms": 200}))
    request_id = await ai.start_video(prompt="walking on the shore", seed=5, duration_seconds=2)
    status = await ai.poll_video(request_id)
    started = time.monotonic()
    while status.state == "pending":
        assert time.monotonic() - started < 10
        await asyncio.sleep(0.05)
        status = await ai.poll_video(request_id)
    assert status.state == "done"
    assert status.data[4:8] == b"ftyp"
    thumb = video_first_frame_jpeg(status.data)
    assert Image.open(io.BytesIO(thumb)).format == "JPEG"
    assert (await ai.poll_video("local-unknown-1")).state == "expired"


async def test_signed_local_urls_cannot_be_altered_or_outlive_expiry(api: Api, app_server) -> None:
    from server import keys

    storage = app_server.app[keys.resources].storage
    assert isinstance(storage, LocalStorage)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await storage.put(f"content/{alice}/image_a.jpg", b"alice-bytes", content_type="image/jpeg")
    await storage.put(f"content/{bob}/image_b.jpg", b"bob-bytes", content_type="image/jpeg")
    url = await storage.signed_url(f"content/{alice}/image_a.jpg")
    parts = urlsplit(url)
    ok = await api.get(f"{parts.path}?{parts.query}")
    assert ok.status == 200 and ok.body == "alice-bytes"
    assert ok.headers["Content-Type"] == "image/jpeg"
    stolen = await api.get(f"{parts.path.replace(str(alice), str(bob)).replace('image_a', 'image_b')}?{parts.query}")
    assert stolen.status == 403 and stolen.body["error"] == "forbidden"
    expired_url = urlsplit(await storage.signed_url(f"content/{alice}/image_a.jpg", expires_in=-5))
    expired = await api.get(f"{expired_url.path}?{expired_url.query}")
    assert expired.status == 403
    bumped = parts.query.replace("expires=", "expires=9")
    assert (await api.get(f"{parts.path}?{bumped}")).status == 403
    not_ascii = await api.get(f"{parts.path}?expires=9999999999&sig=%C3%A9")
    assert not_ascii.status == 403 and not_ascii.body["error"] == "forbidden"
    traversal = await api.get("/files/..%2F..%2Fetc%2Fpasswd?expires=9999999999&sig=x")
    assert traversal.status in (403, 404)
    await storage.delete(f"content/{alice}/image_a.jpg")
    await storage.delete(f"content/{alice}/image_a.jpg")  # deleting twice is fine
    assert (await api.get(f"{parts.path}?{parts.query}")).status == 404
