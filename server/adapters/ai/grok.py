"""xAI Grok over its HTTP API: chat (profiles, prompts), images, and asynchronous videos."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import random
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import orjson

from server.adapters.ai.base import (
    CONTENT_MODERATED,
    CREDENTIALS,
    MODEL_MISSING,
    QUOTA_EXHAUSTED,
    RATE_LIMITED,
    SERVICE_TROUBLE,
    UNAVAILABLE,
    AvatarSpec,
    GeneratedImage,
    ProviderError,
    VideoStatus,
)
from server.config import Settings
from server.media import thumbnail_jpeg

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({408, 425})
MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
MODEL_CHECK_TIMEOUT = 15.0
# xAI's texts for a used-up team (seen as 429, and 403 on newer endpoints) and a wrong key (400).
QUOTA_HINTS = ("used all available credits", "spending limit")
CREDENTIAL_HINTS = ("incorrect api key", "invalid api key", "no api key", "api key provided")
MODERATION_HINTS = ("moderation", "content policy", "safety system")
MODERATED_IMAGE = "The AI provider's content moderation blocked this image"
MODERATED_VIDEO = "The AI provider's content moderation blocked this video"

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


def classify(status: int, message: str, *, what: str) -> ProviderError:
    """The ProviderError an xAI error answer stands for (docs/providers.md); operator faults logged."""
    text = message.lower()
    if status in (402, 403, 429) and any(hint in text for hint in QUOTA_HINTS):
        log.error("%s: xAI says the team's credits or spending limit are used up (%s): %s",
                  what, status, message)
        return ProviderError(f"{what} failed ({status}): xAI credits or spending limit used up",
                             transient=False, status=status, code=QUOTA_EXHAUSTED,
                             user_message=SERVICE_TROUBLE)
    if status in (401, 403) or (status == 400 and any(hint in text for hint in CREDENTIAL_HINTS)):
        # The provider's text may echo parts of the key: operators see it, users never do.
        log.error("%s: xAI refused our credentials (%s): %s", what, status, message)
        return ProviderError(f"{what} failed ({status}): the AI provider refused this service's "
                             "credentials", transient=False, status=status, code=CREDENTIALS,
                             user_message=SERVICE_TROUBLE)
    if status == 429:
        return ProviderError(f"{what} rate limited (429): {message}", transient=True, status=status,
                             code=RATE_LIMITED, user_message=SERVICE_TROUBLE)
    if status == 404 and "model" in text:
        log.error("%s: xAI does not offer the configured model (404): %s", what, message)
        return ProviderError(f"{what} failed (404): the configured model is not available",
                             transient=False, status=status, code=MODEL_MISSING,
                             user_message=SERVICE_TROUBLE)
    if status >= 500 or status in TRANSIENT_STATUSES:
        return ProviderError(f"{what} failed ({status}): {message}", transient=True, status=status,
                             code=UNAVAILABLE, user_message=SERVICE_TROUBLE)
    if any(hint in text for hint in MODERATION_HINTS):
        return ProviderError(f"{what} failed ({status}): {message}", transient=False, status=status,
                             code=CONTENT_MODERATED,
                             user_message=f"The AI provider refused this: {message}")
    return ProviderError(f"{what} failed ({status}): {message}", transient=False, status=status)


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
        self.max_connections = settings.grok_max_connections
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._http: aiohttp.ClientSession | None = None
        self._model_status: dict[str, Any] = {"provider": "grok", "status": "unchecked",
                                              "models": self._models()}

    def _models(self) -> dict[str, str]:
        return {"chat": self.chat_model, "image": self.image_model, "video": self.video_model}

    def __repr__(self) -> str:  # never show the key, even in tracebacks
        return f"GrokProvider(base_url={self.base_url!r})"

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # aiohttp's default of 100 connections would queue a busy worker's generations here.
            self._http = aiohttp.ClientSession(timeout=self.timeout, raise_for_status=False,
                                               connector=aiohttp.TCPConnector(limit=self.max_connections),
                                               json_serialize=lambda v: orjson.dumps(v).decode())
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _delay(self, attempt: int, retry_after: str | None, *, rate_limited: bool = False) -> float:
        """Jittered exponential backoff; a Retry-After (xAI documents none) only lengthens it."""
        base = self.backoff_seconds * (2 ** (attempt - 1)) * (2 if rate_limited else 1)
        delay = min(self.max_backoff_seconds, base) * random.uniform(0.75, 1.25)
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        return min(self.max_backoff_seconds, max(0.0, delay))

    async def _call(self, method: str, url: str, *, what: str, json: Any = None,
                    authorized: bool = True, raw: bool = False, attempts: int | None = None) -> Any:
        """One HTTP exchange, retried on transient failures; JSON (or bytes if raw) back."""
        headers = {"Accept": "application/json"} if not raw else {}
        # The key goes to GROK_BASE_URL only: result downloads from other hosts are not authorized.
        if authorized:
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        last: ProviderError | None = None
        attempts = attempts or self.max_attempts
        for attempt in range(1, attempts + 1):
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
                                                status=resp.status, user_message=SERVICE_TROUBLE) from exc
                    last = classify(resp.status, _provider_message(resp.status, await resp.read()),
                                    what=what)
                    retry_after = resp.headers.get("Retry-After")
            except ProviderError as exc:
                last = exc
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                last = ProviderError(f"{what} failed: {type(exc).__name__} {exc}".strip(), transient=True,
                                     user_message=SERVICE_TROUBLE)
            if not last.transient or attempt == attempts:
                raise last
            delay = self._delay(attempt, retry_after, rate_limited=last.code == RATE_LIMITED)
            log.warning("%s: %s; retry %d/%d in %.2fs", what, last.message, attempt,
                        attempts - 1, delay)
            await asyncio.sleep(delay)
        raise last or ProviderError(f"{what} failed", transient=True)

    async def check_models(self) -> dict[str, Any]:
        """Compare the configured models with xAI's `GET /v1/models`; log and keep the result."""
        wanted = self._models()
        status: dict[str, Any] = {"provider": "grok", "models": wanted}
        try:
            async with asyncio.timeout(MODEL_CHECK_TIMEOUT):
                data = await self._call("GET", f"{self.base_url}/models", what="model list", attempts=2)
            offered: set[str] = set()
            for model in (data.get("data") if isinstance(data, dict) else None) or []:
                if isinstance(model, dict) and isinstance(model.get("id"), str):
                    offered.add(model["id"])
                    offered.update(a for a in model.get("aliases") or [] if isinstance(a, str))
            missing = {role: name for role, name in wanted.items() if name not in offered}
            if missing:
                log.error("xAI does not offer the configured model(s) %s: set GROK_CHAT_MODEL / "
                          "GROK_IMAGE_MODEL / GROK_VIDEO_MODEL to models listed by GET /v1/models "
                          "(see docs/providers.md); calls with them will fail",
                          ", ".join(f"{role}={name}" for role, name in missing.items()))
                status |= {"status": "missing_models", "missing": missing}
            else:
                log.info("xAI offers every configured model: %s",
                         ", ".join(f"{role}={name}" for role, name in wanted.items()))
                status |= {"status": "ok"}
        except ProviderError as exc:
            log.error("could not check the xAI models: %s", exc.message)
            status |= {"status": "unverified", "error": exc.code}
        except TimeoutError:
            log.error("could not check the xAI models: no answer within %.0fs", MODEL_CHECK_TIMEOUT)
            status |= {"status": "unverified", "error": UNAVAILABLE}
        except Exception as exc:  # a startup check must never take the process down
            log.exception("could not check the xAI models")
            status |= {"status": "unverified", "error": type(exc).__name__}
        self._model_status = status | {"checked_at": datetime.now(UTC).isoformat(timespec="seconds")}
        return self._model_status

    def model_status(self) -> dict[str, Any]:
        return dict(self._model_status)

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
            raise ProviderError(f"{what} refused: {message['refusal']}", transient=False,
                                code=CONTENT_MODERATED,
                                user_message=f"The AI provider refused this: {message['refusal']}")
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
        answer = data if isinstance(data, dict) else {}
        items = answer.get("data")
        item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
        if answer.get("block_reason") or item.get("respect_moderation") is False:
            # xAI's moderation refused it: asking again gives the same answer, so fail once.
            reason = answer.get("block_reason") or "respect_moderation is false"
            raise ProviderError(f"image generation blocked by xAI moderation: {reason}", transient=False,
                                status=200, code=CONTENT_MODERATED, user_message=MODERATED_IMAGE)
        if item.get("b64_json"):
            raw = decode_b64_image(item["b64_json"])
        elif item.get("url"):  # result URLs are temporary: fetch the bytes now
            raw = await self._call("GET", item["url"], what="image download", authorized=False, raw=True)
        else:
            raise ProviderError("image generation: no image in the answer", transient=True,
                                user_message=SERVICE_TROUBLE)
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
            return VideoStatus(state="expired", error="the video request expired at the provider",
                               code=UNAVAILABLE)
        video = data.get("video") or {}
        if data.get("block_reason") or video.get("respect_moderation") is False:
            return VideoStatus(state="failed", error=MODERATED_VIDEO, code=CONTENT_MODERATED)
        if state == "failed":
            error = data.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            return VideoStatus(state="failed", error=message or "the provider failed to make the video",
                               code=UNAVAILABLE)
        if not video.get("url"):
            return VideoStatus(state="failed", error="the provider returned no video", code=UNAVAILABLE)
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
