"""A fake xAI API on loopback: checks each request's fields and answers in xAI's documented shapes.

Tests script failures per route (`fail(...)`), video outcomes (`video_outcome`), and
read back every request it saw (`requests`). It knows xAI's model list (MODELS, from
docs.x.ai's models page, see docs/providers.md) and refuses other model names as xAI does.
Latencies can be made realistic (`Latency`: chat, image, video start, render time, poll),
and `python -m tests.support.fake_xai` serves it as a process of its own (bench/pipeline.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import random
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image, ImageDraw

from server.media import to_jpeg, write_mp4

BODY = web.RequestKey("body", object)
CLASSIFIER_SCHEMA = "content_policy_verdict"  # server/moderation/classifier.py
ASPECT_RATIOS = {"1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "2:1", "1:2", "auto"}

# The models xAI lists (docs.x.ai/developers/models, checked 2026-12-01), with some of their
# documented aliases. Retired slugs such as grok-4-fast-non-reasoning (2026-05-15) are not among them.
MODELS: dict[str, list[str]] = {
    "grok-4.3": [],
    "grok-4.20-0309-reasoning": ["grok-4.20", "grok-4.20-reasoning", "grok-4.20-0309",
                                 "grok-4.20-reasoning-latest"],
    "grok-4.20-0309-non-reasoning": ["grok-4.20-non-reasoning"],
    "grok-4.20-multi-agent-0309": ["grok-4.20-multi-agent"],
    "grok-imagine-image": [],
    "grok-imagine-image-quality": [],
    "grok-imagine-video": [],
}
# xAI's texts for a wrong key (400) and a used-up team (429), as users have reported them; xAI
# documents no text for a rate limit, so RATE_LIMIT is only a plausible one.
BAD_KEY = "Incorrect API key provided: xa***. You can obtain an API key from https://console.x.ai."
NO_CREDITS = ("Your team {team} has either used all available credits or reached its monthly "
              "spending limit. To continue making API requests, please purchase more credits or "
              "raise your spending limit.")
RATE_LIMIT = "Too many requests: rate limit exceeded for this model"


def _invalid(message: str, status: int = 400) -> web.Response:
    # xAI answers errors as {"code": "...", "error": "<human message>"}.
    return web.json_response({"code": "Client specified an invalid argument", "error": message}, status=status)


def sample_jpeg(color: tuple[int, int, int] = (200, 120, 90), size: tuple[int, int] = (256, 256)) -> bytes:
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).ellipse([64, 48, 192, 208], fill=(240, 200, 170))
    return to_jpeg(image)


def _sample_mp4() -> bytes:
    frames = [Image.new("RGB", (64, 48), (i * 20, 50, 100)) for i in range(6)]
    return write_mp4(frames, size=(64, 48), fps=6)


def sample_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Latency:
    """Seconds each kind of call takes, drawn uniformly from (low, high); zero by default."""
    chat: tuple[float, float] = (0.0, 0.0)
    image: tuple[float, float] = (0.0, 0.0)  # xAI answers an image request when the image is made
    video_start: tuple[float, float] = (0.0, 0.0)
    video_render: tuple[float, float] | None = None  # set: a video is done this long after its start
    poll: tuple[float, float] = (0.0, 0.0)

    @staticmethod
    async def wait(span: tuple[float, float]) -> None:
        if span[1] > 0:
            await asyncio.sleep(random.uniform(*span))


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeXai:
    api_key: str = field(default_factory=lambda: f"xai-{uuid.uuid4().hex}")
    image_mode: str = "b64_data_uri"  # b64 | b64_data_uri | url | png_url
    video_polls_before_done: int = 1
    video_outcome: str = "done"  # done | failed | expired | withheld
    image_block_reason: str | None = None  # set: images are refused by moderation (200, no image)
    models: dict[str, list[str]] = field(default_factory=lambda: dict(MODELS))
    team_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    delay_seconds: float = 0.0
    latency: Latency = field(default_factory=Latency)
    record: bool = True  # keep every request in `requests` (a long benchmark turns it off)
    requests: list[Seen] = field(default_factory=list)
    _failures: dict[str, deque[tuple[int, Any, dict[str, str]]]] = field(default_factory=lambda: defaultdict(deque))
    _videos: dict[str, int] = field(default_factory=dict)
    _render_until: dict[str, tuple[float, float]] = field(default_factory=dict)  # request -> (start, done at)
    _media_cache: dict[str, bytes] = field(default_factory=dict)
    server: TestServer | None = None
    host: str = "127.0.0.1"
    port: int | None = None

    # -- scripting -----------------------------------------------------------------------
    def fail(self, route: str, status: int, *, times: int = 1, error: str = "boom",
             headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` calls of route (e.g. 'POST /v1/images/generations') with an error."""
        for _ in range(times):
            self._failures[route].append((status, {"code": "error", "error": error}, headers or {}))

    def fail_no_credits(self, route: str, *, status: int = 429, times: int = 1) -> None:
        """The team's credits or monthly spending limit are used up."""
        self.fail(route, status, times=times, error=NO_CREDITS.format(team=self.team_id))

    def _model_refused(self, model: Any) -> web.Response | None:
        known = {name for name, aliases in self.models.items() for name in (name, *aliases)}
        if model in known:
            return None
        return web.json_response({"code": "Some requested entity was not found", "error": (
            f"The model {model} does not exist or your team {self.team_id} does not have access "
            "to it. Please ensure you're using the correct API key. If you believe this is a "
            "mistake, please contact support and quote your team ID and the model name.")}, status=404)

    def calls(self, route: str) -> list[Seen]:
        method, path = route.split(" ", 1)
        return [r for r in self.requests if r.method == method and r.path.startswith(path)]

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1")).rstrip("/")

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> FakeXai:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_post("/v1/videos/generations", self._start_video)
        app.router.add_get("/v1/videos/{request_id}", self._poll_video)
        app.router.add_get("/media/{name}", self._media)
        self.server = TestServer(app, host=self.host, port=self.port)
        await self.server.start_server()
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        if self.record:
            self.requests.append(Seen(request.method, request.path, dict(request.headers), body))
        request[BODY] = body
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if request.path.startswith("/v1/"):
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return _invalid(BAD_KEY)
        elif "Authorization" in request.headers:
            return _invalid("media URLs take no credentials", status=403)
        route = f"{request.method} {request.path if not request.path.startswith('/v1/videos/') or request.method == 'POST' else '/v1/videos/'}"
        queue = self._failures.get(route)
        if queue:
            status, payload, headers = queue.popleft()
            return web.json_response(payload, status=status, headers=headers)
        return await handler(request)

    # -- endpoints ---------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": name, "created": 1_775_000_000, "object": "model", "owned_by": "xai", "aliases": aliases}
            for name, aliases in self.models.items()]})

    async def _chat(self, request: web.Request) -> web.Response:
        body = request[BODY] or {}
        if not isinstance(body.get("model"), str) or not body["model"]:
            return _invalid("model is required", 422)
        if (refused := self._model_refused(body["model"])) is not None:
            return refused
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            for m in messages
        ):
            return _invalid("messages must be a non-empty list of {role, content}", 422)
        user_text = messages[-1]["content"]
        await Latency.wait(self.latency.chat)
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and (fmt.get("json_schema") or {}).get("name") == CLASSIFIER_SCHEMA:
            return await self._classify(body)
        if fmt is not None:
            if fmt.get("type") != "json_schema" or not isinstance(fmt.get("json_schema"), dict) \
                    or not isinstance(fmt["json_schema"].get("schema"), dict) or not fmt["json_schema"].get("name"):
                return _invalid("response_format must be {type: json_schema, json_schema: {name, schema}}")
            spec = orjson.loads(user_text.split("\n", 1)[1])
            content = orjson.dumps({
                "identity": f"{spec['name']}, a {spec['age']}-year-old adult with copper hair and green eyes",
                "physical_traits": {"hair": "copper", "eyes": "green", "build": "athletic", "skin": "fair",
                                    "face": "oval", "distinguishing_features": "freckles"},
                "style": spec.get("style") or "casual chic",
                "personality": spec.get("personality") or "warm and witty",
                "backstory": spec.get("description") or "A traveller.",
            }).decode()
        else:
            content = f"Enhanced: {user_text.splitlines()[-1].removeprefix('Request: ')}, golden hour light"
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30},
        })

    async def _images(self, request: web.Request) -> web.Response:
        body = request[BODY] or {}
        if not body.get("model") or not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return _invalid("model and prompt are required", 422)
        if (refused := self._model_refused(body["model"])) is not None:
            return refused
        if body.get("response_format", "url") not in ("url", "b64_json"):
            return _invalid("response_format must be url or b64_json")
        if body.get("aspect_ratio", "1:1") not in ASPECT_RATIOS:
            return _invalid(f"Invalid aspect_ratio: {body.get('aspect_ratio')}")
        if body.get("resolution", "1k") not in ("1k", "2k"):
            return _invalid("resolution must be 1k or 2k")
        if "size" in body or "style" in body or "seed" in body:
            return _invalid("Argument not supported: size/style/seed")
        if body.get("quality", "medium") not in ("low", "medium", "high"):
            return _invalid("quality must be low, medium or high")
        if not 1 <= int(body.get("n", 1)) <= 10:
            return _invalid("n must be between 1 and 10")
        await Latency.wait(self.latency.image)
        if self.image_block_reason:  # xAI's moderation: 200 with a block_reason and no image
            return web.json_response({"block_reason": self.image_block_reason, "data": [
                {"url": None, "b64_json": None, "mime_type": None, "revised_prompt": ""}]})
        item: dict[str, Any] = {"revised_prompt": f"revised: {body['prompt'][:100]}"}
        if self.image_mode in ("url", "png_url") or body.get("response_format", "url") == "url":
            name = "image.png" if self.image_mode == "png_url" else "image.jpg"
            item["url"] = str(self.server.make_url(f"/media/{name}"))
        else:
            encoded = self._cached("b64", lambda: base64.b64encode(sample_jpeg())).decode()
            item["b64_json"] = ("data:image/jpeg;base64," + encoded) if self.image_mode == "b64_data_uri" else encoded
        item["mime_type"] = "image/jpeg"
        return web.json_response({"block_reason": None, "data": [item]})

    async def _start_video(self, request: web.Request) -> web.Response:
        body = request[BODY] or {}
        if not body.get("prompt"):
            return _invalid("prompt is required", 422)
        if (refused := self._model_refused(body.get("model"))) is not None:
            return refused
        if not str(body.get("model", "")).startswith("grok-imagine-video"):
            return _invalid(f"Model {body.get('model')!r} does not support video generation")
        duration = body.get("duration", 8)
        if not isinstance(duration, int) or not 1 <= duration <= 15:
            return _invalid("duration must be an integer in [1, 15]")
        if body.get("resolution", "480p") not in ("480p", "720p"):
            return _invalid("resolution must be 480p or 720p")
        if body.get("aspect_ratio", "16:9") not in ASPECT_RATIOS - {"auto", "2:1", "1:2"}:
            return _invalid("invalid aspect_ratio")
        image = body.get("image")
        if image is not None and not (isinstance(image, dict) and isinstance(image.get("url"), str)):
            return _invalid("image must be {url}")
        await Latency.wait(self.latency.video_start)
        request_id = str(uuid.uuid4())
        self._videos[request_id] = 0
        if self.latency.video_render is not None:
            now = time.monotonic()
            self._render_until[request_id] = (now, now + random.uniform(*self.latency.video_render))
        return web.json_response({"request_id": request_id})

    async def _poll_video(self, request: web.Request) -> web.Response:
        request_id = request.match_info["request_id"]
        if request_id not in self._videos:
            return web.json_response({"code": "Some requested entity was not found",
                                      "error": f"No video request {request_id}"}, status=404)
        self._videos[request_id] += 1
        await Latency.wait(self.latency.poll)
        if request_id in self._render_until:
            start, done_at = self._render_until[request_id]
            if time.monotonic() < done_at:
                progress = int(100 * (time.monotonic() - start) / max(done_at - start, 0.001))
                return web.json_response({"status": "pending", "progress": progress})
        elif self._videos[request_id] <= self.video_polls_before_done:
            return web.json_response({"status": "pending"})
        if self.video_outcome == "failed":
            return web.json_response({"status": "failed", "video": {"duration": 0, "respect_moderation": True},
                                      "model": "", "error": {"code": "internal_error",
                                                             "message": "Video generation failed: out of capacity"}})
        if self.video_outcome == "expired":
            return web.json_response({"status": "expired"})
        if self.video_outcome == "withheld":
            return web.json_response({"status": "done", "model": "grok-imagine-video",
                                      "video": {"duration": 2, "respect_moderation": False}})
        return web.json_response({"status": "done", "model": "grok-imagine-video", "video": {
            "url": str(self.server.make_url("/media/video.mp4")), "duration": 2, "respect_moderation": True}})

    async def _media(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "image.jpg":
            return web.Response(body=sample_jpeg(), content_type="image/jpeg")
        if name == "image.png":
            return web.Response(body=sample_png(), content_type="image/png")
        if name == "video.mp4":
            return web.Response(body=self._cached("mp4", _sample_mp4), content_type="video/mp4")
        raise web.HTTPNotFound()

    def _cached(self, name: str, make: Any) -> bytes:
        if name not in self._media_cache:
            self._media_cache[name] = make()
        return self._media_cache[name]

    # -- content classifier (server/moderation/classifier.py) -----------------------------------
    # The studio's second screening layer asks chat completions for a verdict whose schema is
    # named "content_policy_verdict". Tests script it: `classifier_flags` maps a lowercase
    # substring to the category answered for texts that contain it (anything else is allowed);
    # `classifier_mode` breaks it: "slow" (answers after classifier_delay_seconds), "malformed"
    # (JSON that is not the schema), "not_json", "refusal" (the model declines), "error" (500).
    classifier_flags: dict[str, str] = field(default_factory=dict)
    classifier_mode: str = "answer"
    classifier_delay_seconds: float = 0.0

    def classifier_calls(self) -> list[Seen]:
        """Chat calls that asked for a content verdict, oldest first."""
        return [r for r in self.calls("POST /v1/chat/completions")
                if ((r.body or {}).get("response_format") or {}).get("json_schema", {}).get("name") == CLASSIFIER_SCHEMA]

    async def _classify(self, body: dict[str, Any]) -> web.Response:
        spec = body["response_format"]["json_schema"]
        schema = spec.get("schema") or {}
        if schema.get("required") != ["allowed", "category"] or schema.get("additionalProperties") is not False:
            return _invalid("json_schema: strict object schema expected")
        text = body["messages"][-1]["content"]
        if self.classifier_mode == "error":
            return web.json_response({"code": "Internal error", "error": "classifier overloaded"}, status=500)
        if self.classifier_mode == "slow":
            await asyncio.sleep(self.classifier_delay_seconds)
        verdict: Any = {"allowed": True, "category": "none"}
        for marker, category in self.classifier_flags.items():
            if marker in text.lower():
                verdict = {"allowed": False, "category": category}
                break
        refusal = None
        content = orjson.dumps(verdict).decode()
        if self.classifier_mode == "malformed":
            content = orjson.dumps({"verdict": "fine"}).decode()
        elif self.classifier_mode == "not_json":
            content = "I think this is fine."
        elif self.classifier_mode == "refusal":
            content, refusal = None, "I can't help with that."
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": refusal},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 200, "completion_tokens": 8, "total_tokens": 208},
        })


def _span(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


async def _serve(args: argparse.Namespace) -> None:
    render = _span(args.video_render) if args.video_render else None
    fake = FakeXai(api_key=args.api_key, record=False, port=args.port, image_mode="b64", latency=Latency(
        chat=_span(args.chat), image=_span(args.image), video_start=_span(args.video_start),
        video_render=render, poll=_span(args.poll)))
    await fake.start()
    print(fake.base_url, flush=True)  # the parent reads this line: the server is up
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The fake xAI API as a process of its own")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", required=True)
    for name, default in (("chat", "0"), ("image", "0"), ("video-start", "0"), ("video-render", ""), ("poll", "0")):
        parser.add_argument(f"--{name}", default=default, help="seconds: LOW,HIGH (uniform) or one value")
    asyncio.run(_serve(parser.parse_args()))
