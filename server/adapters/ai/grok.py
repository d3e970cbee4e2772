"""xAI Grok over its HTTP API: chat (profiles, prompts), images, and asynchronous videos.

429, 5xx, timeouts and dropped connections are retried with exponential backoff (a
bounded number of times); 400/401/403/404/422 are permanent and carry the provider's
message. Result URLs are temporary, so bytes are downloaded at once. The API key is
only ever put in the Authorization header of calls to GROK_BASE_URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
from typing import Any, Literal

import aiohttp
import orjson

from server.adapters.ai.base import AvatarSpec, GeneratedImage, ProviderError, VideoStatus
from server.config import Settings
from server.media import thumbnail_jpeg

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 425, 429})
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024

PROFILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "identity": {"type": "string", "description": "One fixed sentence naming the character, "
                     "their adult age and their unchanging look; put in every image prompt."},
        "physical_traits": {
            "type": "object",
            "properties": {
                "hair": {"type": "string"}, "eyes": {"type": "string"}, "build": {"type": "string"},
                "skin": {"type": "string"}, "face": {"type": "string"},
                "distinguishing_features": {"type": "string"},
            },
            "required": ["hair", "eyes", "build", "skin", "face", "distinguishing_features"],
            "additionalProperties": False,
        },
        "style": {"type": "string"},
        "personality": {"type": "string"},
        "backstory": {"type": "string"},
    },
    "required": ["identity", "physical_traits", "style", "personality", "backstory"],
    "additionalProperties": False,
}

PROFILE_SYSTEM = (
    "You design consistent characters for an image studio. Every character is an adult "
    "aged 18 or over. Answer with the JSON object of the schema only. The `identity` is one "
    "sentence with the name, the stated adult age and the unchanging physical look, reused "
    "verbatim in every future prompt, so it must not mention clothing of one scene."
)
ENHANCE_SYSTEM = (
    "You rewrite a user's request into one vivid prompt for a {kind} generation model. Keep "
    "the user's intent and every concrete detail. If a character identity is given, start "
    "with it verbatim so the character looks the same in every {kind}. All people are adults. "
    "Answer with the prompt text only, at most 900 characters."
)
VIDEO_STATES = {"pending": "pending", "queued": "pending", "processing": "pending",
                "in_progress": "pending", "done": "done", "failed": "failed", "expired": "expired"}


def _provider_message(status: int, body: bytes) -> str:
    """The provider's own error text from the shapes xAI (and OpenAI-style proxies) use."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode(errors="replace").strip()
        return text[:500] or f"HTTP {status}"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error.get("code") or data)[:500]
        if isinstance(error, str):
            return error[:500]
        for key in ("message", "detail", "code"):
            if data.get(key):
                return str(data[key])[:500]
    if isinstance(data, str):
        return data[:500]
    return f"HTTP {status}"


def decode_b64_image(value: str) -> bytes:
    """Base64 image data, with or without a `data:image/...;base64,` prefix."""
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    try:
        return base64.b64decode(value.strip(), validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ProviderError(f"the image data is not valid base64: {exc}", transient=False) from exc


class GrokProvider:
    def __init__(self, settings: Settings, *, max_attempts: int = 4, backoff_seconds: float = 0.5,
                 max_backoff_seconds: float = 20.0) -> None:
        if settings.grok_api_key is None:
            raise ValueError("GROK_API_KEY is required for the grok provider")
        self._key = settings.grok_api_key
        self.base_url = settings.grok_base_url.rstrip("/")
        self.chat_model = settings.grok_chat_model
        self.image_model = settings.grok_image_model
        self.video_model = settings.grok_video_model
        self.timeout = aiohttp.ClientTimeout(total=settings.grok_timeout_seconds,
                                             sock_connect=min(10.0, settings.grok_timeout_seconds))
        self.max_attempts = max(1, max_attempts)
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show the key, even in tracebacks
        return f"GrokProvider(base_url={self.base_url!r})"

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self.timeout, raise_for_status=False,
                                               json_serialize=lambda v: orjson.dumps(v).decode())
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff_seconds, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = self.backoff_seconds * (2 ** (attempt - 1))
        return min(self.max_backoff_seconds, base * random.uniform(0.8, 1.2))

    async def _call(self, method: str, url: str, *, what: str, json: Any = None,
                    authorized: bool = True, raw: bool = False) -> Any:
        """One HTTP exchange, retried on transient failures; JSON (or bytes if raw) back."""
        headers = {"Accept": "application/json"} if not raw else {}
        if authorized:
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        last: ProviderError | None = None
        for attempt in range(1, self.max_attempts + 1):
            retry_after = None
            try:
                async with self._session().request(method, url, json=json, headers=headers) as resp:
                    if resp.status < 400:
                        if raw:
                            if (resp.content_length or 0) > MAX_DOWNLOAD_BYTES:
                                raise ProviderError(f"{what}: the file is too large", transient=False)
                            return await resp.read()
                        body = await resp.read()
                        try:
                            return orjson.loads(body)
                        except orjson.JSONDecodeError as exc:
                            raise ProviderError(f"{what}: the answer is not JSON", transient=True,
                                                status=resp.status) from exc
                    message = _provider_message(resp.status, await resp.read())
                    if resp.status in (401, 403):
                        # Users see that the provider refused us; operators see why (it may echo key parts).
                        log.error("%s: xAI refused our credentials (%s): %s", what, resp.status, message)
                        message = "the AI provider refused this service's credentials"
                    transient = resp.status in TRANSIENT_STATUSES or resp.status >= 500
                    last = ProviderError(f"{what} failed ({resp.status}): {message}",
                                         transient=transient, status=resp.status)
                    retry_after = resp.headers.get("Retry-After")
            except ProviderError as exc:
                last = exc
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                last = ProviderError(f"{what} failed: {type(exc).__name__} {exc}".strip(), transient=True)
            if not last.transient or attempt == self.max_attempts:
                raise last
            delay = self._delay(attempt, retry_after)
            log.warning("%s: %s; retry %d/%d in %.2fs", what, last.message, attempt,
                        self.max_attempts - 1, delay)
            await asyncio.sleep(delay)
        raise last or ProviderError(f"{what} failed", transient=True)

    async def _chat(self, messages: list[dict[str, str]], *, response_format: dict | None = None,
                    what: str) -> str:
        body: dict[str, Any] = {"model": self.chat_model, "messages": messages, "temperature": 0.7}
        if response_format is not None:
            body["response_format"] = response_format
        data = await self._call("POST", f"{self.base_url}/chat/completions", json=body, what=what)
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderError(f"{what}: unexpected answer shape", transient=True) from exc
        if message.get("refusal"):
            raise ProviderError(f"{what} refused: {message['refusal']}", transient=False)
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ProviderError(f"{what}: empty answer", transient=True)
        return content.strip()

    async def character_profile(self, avatar: AvatarSpec) -> dict[str, Any]:
        request = {
            "name": avatar.name, "age": avatar.age, "description": avatar.description,
            "appearance": avatar.appearance, "personality": avatar.personality, "style": avatar.style,
        }
        content = await self._chat(
            [{"role": "system", "content": PROFILE_SYSTEM},
             {"role": "user", "content": "Design this character:\n" + orjson.dumps(request).decode()}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "avatar_profile", "schema": PROFILE_SCHEMA, "strict": True}},
            what="character profile",
        )
        try:
            profile = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise ProviderError("character profile: the answer is not JSON", transient=True) from exc
        missing = [k for k in PROFILE_SCHEMA["required"] if k not in profile]
        if not isinstance(profile, dict) or missing or not str(profile.get("identity", "")).strip():
            raise ProviderError(f"character profile: missing {missing or ['identity']}", transient=True)
        return {**profile, "provider": "grok", "model": self.chat_model}

    async def enhance_prompt(
        self, *, prompt: str, kind: Literal["image", "video"], profile: dict[str, Any] | None
    ) -> str:
        identity = (profile or {}).get("identity")
        user = f"Character identity: {identity}\nRequest: {prompt}" if identity else f"Request: {prompt}"
        return await self._chat(
            [{"role": "system", "content": ENHANCE_SYSTEM.format(kind=kind)},
             {"role": "user", "content": user}],
            what="prompt enhancement",
        )

    async def generate_image(
        self, *, prompt: str, seed: int, aspect_ratio: str = "1:1", quality: str = "standard"
    ) -> GeneratedImage:
        # xAI takes no seed: the avatar's fixed identity sentence in the prompt keeps it consistent.
        body = {"model": self.image_model, "prompt": prompt, "n": 1, "response_format": "b64_json",
                "aspect_ratio": aspect_ratio, "resolution": "2k" if quality == "premium" else "1k"}
        data = await self._call("POST", f"{self.base_url}/images/generations", json=body,
                                what="image generation")
        try:
            item = data["data"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderError("image generation: no image in the answer", transient=True) from exc
        if item.get("b64_json"):
            raw = decode_b64_image(item["b64_json"])
        elif item.get("url"):
            raw = await self._call("GET", item["url"], what="image download", authorized=False, raw=True)
        else:
            raise ProviderError("image generation: no image in the answer", transient=True)
        return GeneratedImage(data=await asyncio.to_thread(_as_jpeg, raw), content_type="image/jpeg",
                              revised_prompt=item.get("revised_prompt"))

    async def start_video(
        self, *, prompt: str, seed: int, duration_seconds: int, aspect_ratio: str = "16:9",
        image_url: str | None = None, image_data: bytes | None = None, quality: str = "standard",
    ) -> str:
        body: dict[str, Any] = {
            "model": self.video_model, "prompt": prompt,
            "duration": max(1, min(15, int(duration_seconds))), "aspect_ratio": aspect_ratio,
            "resolution": "480p" if quality == "standard" else "720p",
        }
        if image_data is not None:
            body["image"] = {"url": "data:image/jpeg;base64," + base64.b64encode(image_data).decode()}
        elif image_url:
            body["image"] = {"url": image_url}
        data = await self._call("POST", f"{self.base_url}/videos/generations", json=body,
                                what="video generation")
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not request_id:
            raise ProviderError("video generation: no request_id in the answer", transient=True)
        return str(request_id)

    async def poll_video(self, request_id: str) -> VideoStatus:
        data = await self._call("GET", f"{self.base_url}/videos/{request_id}", what="video status")
        state = VIDEO_STATES.get(str(data.get("status", "pending")).lower())
        if state is None:
            raise ProviderError(f"video status: unknown status {data.get('status')!r}", transient=True)
        progress = data.get("progress") if isinstance(data.get("progress"), int) else None
        if state == "pending":
            return VideoStatus(state="pending", progress=progress)
        if state == "expired":
            return VideoStatus(state="expired", error="the video request expired at the provider")
        video = data.get("video") or {}
        if state == "failed":
            error = data.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            return VideoStatus(state="failed", error=message or "the provider failed to make the video")
        if video.get("respect_moderation") is False or not video.get("url"):
            return VideoStatus(state="failed", error="the provider withheld the video (moderation)")
        mp4 = await self._call("GET", video["url"], what="video download", authorized=False, raw=True)
        return VideoStatus(state="done", progress=100, data=mp4)


def _as_jpeg(data: bytes) -> bytes:
    """JPEG bytes as they are; any other image format Pillow reads, re-encoded as JPEG."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    try:
        return thumbnail_jpeg(data, size=4096)
    except Exception as exc:
        raise ProviderError(f"the image could not be read: {exc}", transient=False) from exc
