"""Offline, deterministic AI provider: real JPEGs and MP4s rendered from seed and prompt."""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import io
import math
import random
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFilter

from server.adapters.ai.base import AvatarSpec, GeneratedImage, ProviderError, VideoStatus
from server.config import Settings
from server.media import to_jpeg, write_mp4

HAIR = ["black", "dark brown", "chestnut", "auburn", "blonde", "platinum", "silver", "red"]
EYES = ["brown", "hazel", "green", "blue", "grey", "amber"]
BUILD = ["slender", "athletic", "curvy", "petite", "tall", "muscular"]
STYLES = ["streetwear", "elegant evening wear", "bohemian", "minimalist", "vintage", "sporty"]
TRAITS = ["confident", "playful", "mysterious", "warm", "witty", "calm", "adventurous"]
QUALITY_SIZE = {"standard": 768, "hd": 1024, "premium": 1280}
VIDEO_FPS = 12


def _ratio(aspect_ratio: str) -> tuple[int, int]:
    try:
        w, h = (int(part) for part in aspect_ratio.split(":"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    return 1, 1


def _size(aspect_ratio: str, long_side: int) -> tuple[int, int]:
    w, h = _ratio(aspect_ratio)
    if w >= h:
        return long_side, max(8, round(long_side * h / w / 8) * 8)
    return max(8, round(long_side * w / h / 8) * 8), long_side


def _palette(seed: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    hue = rng.random()
    colors = []
    for shift, sat, val in ((0.0, 0.55, 0.35), (0.08, 0.45, 0.75), (0.5, 0.6, 0.9), (0.03, 0.35, 0.95)):
        r, g, b = colorsys.hsv_to_rgb((hue + shift) % 1.0, sat, val)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _prompt_seed(prompt: str) -> int:
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")


def render_frame(*, seed: int, prompt: str, size: tuple[int, int], t: float = 0.0) -> Image.Image:
    """One picture: the avatar's figure (from seed) in a scene (from prompt), at time t."""
    # The seed fixes palette and figure, so every image of one avatar visibly shares them.
    width, height = size
    bg, mid, accent, skin = _palette(seed)
    image = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 4):  # vertical gradient bg -> mid
        k = y / height
        color = tuple(int(bg[i] * (1 - k) + mid[i] * k) for i in range(3))
        draw.rectangle([0, y, width, y + 4], fill=color)
    scene = random.Random(_prompt_seed(prompt))
    for _ in range(14):
        cx = (scene.random() + t * scene.uniform(-0.05, 0.05)) % 1.0 * width
        cy = scene.random() * height
        r = scene.uniform(0.02, 0.12) * min(size)
        shade = tuple(min(255, int(c * scene.uniform(0.7, 1.2))) for c in accent)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shade)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1, min(size) // 160)))
    draw = ImageDraw.Draw(image)
    figure = random.Random(seed)
    unit = min(size) / 10
    cx = width / 2 + unit * 0.6 * math.sin(t * 2.1)
    cy = height * 0.55
    hair = tuple(int(c * 0.5) for c in random.Random(seed + 7).choice([bg, mid, accent]))
    body_w = unit * figure.uniform(1.3, 1.9)
    draw.rounded_rectangle([cx - body_w, cy, cx + body_w, height], radius=int(unit), fill=mid)
    head = unit * figure.uniform(0.9, 1.2)
    draw.ellipse([cx - head * 1.25, cy - head * 2.6, cx + head * 1.25, cy - head * 0.1], fill=hair)
    draw.ellipse([cx - head, cy - head * 2.3, cx + head, cy - head * 0.2], fill=skin)
    eye = tuple(int(c * 0.4) for c in accent)
    for dx in (-0.4, 0.4):
        ex, ey = cx + dx * head, cy - head * 1.35
        draw.ellipse([ex - head * 0.12, ey - head * 0.12, ex + head * 0.12, ey + head * 0.12], fill=eye)
    caption = prompt[:80]
    draw.rectangle([0, height - unit * 0.7, width, height], fill=(0, 0, 0))
    draw.text((unit * 0.2, height - unit * 0.6), caption, fill=(235, 235, 235))
    return image


class LocalProvider:
    def __init__(self, settings: Settings) -> None:
        self.delay = settings.local_ai_delay_ms / 1000  # so progress can be watched
        self.video_dir = Path(settings.data_dir) / "local-ai"

    async def _think(self, factor: float = 1.0) -> None:
        if self.delay:
            await asyncio.sleep(self.delay * factor)

    async def character_profile(self, avatar: AvatarSpec) -> dict[str, Any]:
        await self._think()
        rng = random.Random(avatar.seed)
        given = {str(k): v for k, v in (avatar.appearance or {}).items()}
        traits = {
            "hair": str(given.get("hair") or rng.choice(HAIR)),
            "eyes": str(given.get("eyes") or rng.choice(EYES)),
            "build": str(given.get("build") or rng.choice(BUILD)),
            **{k: str(v) for k, v in given.items() if k not in ("hair", "eyes", "build")},
        }
        style = avatar.style or rng.choice(STYLES)
        personality = avatar.personality or ", ".join(rng.sample(TRAITS, 2))
        identity = (
            f"{avatar.name}, a {avatar.age}-year-old adult with {traits['hair']} hair, "
            f"{traits['eyes']} eyes and a {traits['build']} build, dressed in {style}"
        )
        return {
            "identity": identity,
            "physical_traits": traits,
            "style": style,
            "personality": personality,
            "backstory": (avatar.description or f"{avatar.name} is {personality}.")[:500],
            "palette": ["#{:02x}{:02x}{:02x}".format(*c) for c in _palette(avatar.seed)],
            "provider": "local",
        }

    async def enhance_prompt(
        self, *, prompt: str, kind: Literal["image", "video"], profile: dict[str, Any] | None
    ) -> str:
        await self._think(0.5)
        parts = [prompt.strip()]
        if profile and profile.get("identity"):
            parts.insert(0, str(profile["identity"]))
        parts.append("cinematic motion, smooth camera" if kind == "video" else "detailed, soft light")
        return ". ".join(parts)

    async def generate_image(
        self, *, prompt: str, seed: int, aspect_ratio: str = "1:1", quality: str = "standard"
    ) -> GeneratedImage:
        await self._think()
        size = _size(aspect_ratio, QUALITY_SIZE.get(quality, 768))
        image = await asyncio.to_thread(render_frame, seed=seed, prompt=prompt, size=size)
        return GeneratedImage(data=await asyncio.to_thread(to_jpeg, image), content_type="image/jpeg",
                              revised_prompt=prompt)

    async def start_video(
        self, *, prompt: str, seed: int, duration_seconds: int, aspect_ratio: str = "16:9",
        image_url: str | None = None, image_data: bytes | None = None, quality: str = "standard",
    ) -> str:
        ready_at = int((time.time() + self.delay * 2) * 1000)
        request_id = f"local-{uuid.uuid4().hex}-{ready_at}"
        data = await asyncio.to_thread(
            self._render_video, prompt, seed, duration_seconds, aspect_ratio, image_data
        )
        self.video_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread((self.video_dir / f"{request_id}.mp4").write_bytes, data)
        return request_id

    def _render_video(self, prompt: str, seed: int, duration: int, aspect_ratio: str,
                      image_data: bytes | None) -> bytes:
        size = _size(aspect_ratio, 640)
        source = None
        if image_data:
            source = Image.open(io.BytesIO(image_data)).convert("RGB")
        frames = []
        for i in range(max(1, duration) * VIDEO_FPS):
            t = i / VIDEO_FPS
            if source is not None:
                zoom = 1 + 0.15 * t / max(1, duration)  # a slow push-in over the source image
                w, h = source.size
                cw, ch = w / zoom, h / zoom
                box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
                frames.append(source.resize(size, box=box))
            else:
                frames.append(render_frame(seed=seed, prompt=prompt, size=size, t=t))
        return write_mp4(frames, size=size, fps=VIDEO_FPS)

    async def poll_video(self, request_id: str) -> VideoStatus:
        try:
            ready_at = int(request_id.rsplit("-", 1)[1])
        except (IndexError, ValueError) as exc:
            raise ProviderError(f"unknown video request {request_id!r}", transient=False) from exc
        remaining = ready_at / 1000 - time.time()
        if remaining > 0:
            total = max(self.delay * 2, 0.001)
            return VideoStatus(state="pending", progress=int(100 * (1 - remaining / total)))
        path = self.video_dir / f"{request_id}.mp4"
        if not path.exists():
            return VideoStatus(state="expired", error="the rendered video is gone")
        return VideoStatus(state="done", progress=100, data=await asyncio.to_thread(path.read_bytes))

    async def check_models(self) -> dict[str, Any]:
        return self.model_status()

    def model_status(self) -> dict[str, Any]:
        return {"provider": "local", "status": "ok"}

    async def aclose(self) -> None:
        return None
