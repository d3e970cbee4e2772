"""The grok adapter against a fake xAI server on loopback, over real HTTP."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from PIL import Image
from pydantic import SecretStr

from server.adapters.ai import make_ai
from server.adapters.ai.base import (
    CONTENT_MODERATED,
    CREDENTIALS,
    MODEL_MISSING,
    QUOTA_EXHAUSTED,
    RATE_LIMITED,
    SERVICE_TROUBLE,
    AvatarSpec,
    ProviderError,
)
from server.adapters.ai.grok import GrokProvider
from server.config import Settings
from tests.conftest import start_app
from tests.support.api import Api
from tests.support.fake_xai import MODELS, RATE_LIMIT


@pytest.fixture
def grok_settings(settings, xai):
    return settings.model_copy(update={"grok_api_key": SecretStr(xai.api_key), "grok_base_url": xai.base_url,
                                       "grok_timeout_seconds": 5.0})


@pytest.fixture
async def grok(grok_settings):
    provider = GrokProvider(grok_settings, backoff_seconds=0.01)
    yield provider
    await provider.aclose()


async def test_factory_picks_grok_only_with_a_key(settings, grok_settings) -> None:
    from server.adapters.ai.local import LocalProvider

    assert isinstance(make_ai(settings), LocalProvider)
    chosen = make_ai(grok_settings)
    assert isinstance(chosen, GrokProvider)
    assert grok_settings.grok_api_key.get_secret_value() not in repr(chosen)
    await chosen.aclose()


async def test_profile_is_structured_json_from_chat_completions(grok, xai) -> None:
    profile = await grok.character_profile(AvatarSpec(name="Mara", age=27, seed=3, style="gothic"))
    assert profile["identity"].startswith("Mara, a 27-year-old adult")
    assert profile["physical_traits"]["hair"] == "copper" and profile["style"] == "gothic"
    (call,) = xai.calls("POST /v1/chat/completions")
    assert call.headers["Authorization"] == f"Bearer {xai.api_key}"
    assert call.body["model"] == Settings.model_fields["grok_chat_model"].default
    assert call.body["model"] in MODELS  # a model xAI still offers
    fmt = call.body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "avatar_profile"
    assert fmt["json_schema"]["schema"]["required"] == ["identity", "physical_traits", "style", "personality", "backstory"]
    assert call.body["messages"][0]["role"] == "system" and "adult" in call.body["messages"][0]["content"]


async def test_prompt_enhancement_puts_the_identity_first(grok, xai) -> None:
    text = await grok.enhance_prompt(prompt="reading in a cafe", kind="image",
                                     profile={"identity": "Mara, a 27-year-old adult"})
    assert text == "Enhanced: reading in a cafe, golden hour light"
    (call,) = xai.calls("POST /v1/chat/completions")
    assert "response_format" not in call.body
    assert call.body["messages"][1]["content"].startswith("Character identity: Mara, a 27-year-old adult")


@pytest.mark.parametrize("mode", ["b64_data_uri", "b64", "url", "png_url"])
async def test_images_arrive_as_jpeg_bytes_whatever_the_answer_shape(grok, xai, mode) -> None:
    xai.image_mode = mode
    image = await grok.generate_image(prompt="a portrait", seed=1, aspect_ratio="16:9", quality="premium")
    assert Image.open(io.BytesIO(image.data)).format == "JPEG"
    assert image.revised_prompt == "revised: a portrait"
    (call,) = xai.calls("POST /v1/images/generations")
    assert call.body == {"model": "grok-imagine-image", "prompt": "a portrait", "n": 1,
                         "response_format": "b64_json", "aspect_ratio": "16:9", "resolution": "2k"}
    downloads = xai.calls("GET /media/")
    assert len(downloads) == (1 if mode.endswith("url") else 0)
    assert all("Authorization" not in d.headers for d in downloads)  # the key never leaves for media hosts


async def test_429_then_success_honours_a_retry_after_when_given(grok, xai) -> None:
    xai.fail("POST /v1/images/generations", 429, error="Rate limit exceeded", headers={"Retry-After": "0"})
    image = await grok.generate_image(prompt="x", seed=1)
    assert image.data[:3] == b"\xff\xd8\xff"
    assert len(xai.calls("POST /v1/images/generations")) == 2


async def test_5xx_twice_then_success(grok, xai) -> None:
    xai.fail("POST /v1/chat/completions", 503, times=2, error="overloaded")
    assert (await grok.enhance_prompt(prompt="hi", kind="video", profile=None)).startswith("Enhanced: hi")
    assert len(xai.calls("POST /v1/chat/completions")) == 3


async def test_retries_are_bounded_and_stay_transient(grok, xai) -> None:
    xai.fail("POST /v1/images/generations", 500, times=10, error="internal")
    with pytest.raises(ProviderError) as caught:
        await grok.generate_image(prompt="x", seed=1)
    assert caught.value.transient and caught.value.status == 500
    assert len(xai.calls("POST /v1/images/generations")) == grok.max_attempts


async def test_permanent_400_is_not_retried_and_keeps_the_provider_message(grok, xai) -> None:
    xai.fail("POST /v1/images/generations", 400, error="Invalid aspect_ratio: 7:5")
    with pytest.raises(ProviderError) as caught:
        await grok.generate_image(prompt="x", seed=1)
    assert not caught.value.transient and caught.value.status == 400
    assert "Invalid aspect_ratio: 7:5" in caught.value.message
    assert "Invalid aspect_ratio: 7:5" in caught.value.user_message
    assert len(xai.calls("POST /v1/images/generations")) == 1


async def test_a_400_moderation_refusal_has_its_own_code(grok, xai) -> None:
    xai.fail("POST /v1/images/generations", 400, error="Generated image rejected by content moderation.")
    with pytest.raises(ProviderError) as caught:
        await grok.generate_image(prompt="x", seed=1)
    assert (caught.value.transient, caught.value.code) == (False, CONTENT_MODERATED)
    assert len(xai.calls("POST /v1/images/generations")) == 1


async def test_bad_key_is_permanent_and_never_logged(grok_settings, xai, caplog) -> None:
    wrong = grok_settings.model_copy(update={"grok_api_key": SecretStr("xai-wrong-key-0123456789")})
    provider = GrokProvider(wrong, backoff_seconds=0.01)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.character_profile(AvatarSpec(name="A", age=30, seed=1))
    finally:
        await provider.aclose()
    error = caught.value
    # xAI answers a wrong key with 400 "Incorrect API key provided": a credential error, not a
    # bad request. Operators read xAI's text in the log; users get a generic message.
    assert (error.transient, error.status, error.code) == (False, 400, CREDENTIALS)
    assert "Incorrect API key" not in error.message and error.user_message == SERVICE_TROUBLE
    assert "Incorrect API key provided" in caplog.text
    assert len(xai.calls("POST /v1/chat/completions")) == 1
    assert "xai-wrong-key-0123456789" not in caplog.text and xai.api_key not in caplog.text


async def test_timeouts_are_transient_and_retried(grok_settings, xai) -> None:
    xai.delay_seconds = 0.5
    provider = GrokProvider(grok_settings.model_copy(update={"grok_timeout_seconds": 0.1}),
                            max_attempts=2, backoff_seconds=0.01)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.enhance_prompt(prompt="x", kind="image", profile=None)
    finally:
        await provider.aclose()
    assert caught.value.transient and "Timeout" in caught.value.message
    assert len(xai.calls("POST /v1/chat/completions")) == 2


async def test_video_is_polled_until_done_and_downloaded(grok, xai) -> None:
    xai.video_polls_before_done = 2
    request_id = await grok.start_video(prompt="waves", seed=1, duration_seconds=20, aspect_ratio="9:16",
                                        image_data=b"\xff\xd8\xffjpeg", quality="hd")
    (start,) = xai.calls("POST /v1/videos/generations")
    assert start.body["model"] == "grok-imagine-video" and start.body["duration"] == 15
    assert start.body["resolution"] == "720p" and start.body["aspect_ratio"] == "9:16"
    assert start.body["image"]["url"].startswith("data:image/jpeg;base64,")
    states = [await grok.poll_video(request_id) for _ in range(3)]
    assert [s.state for s in states] == ["pending", "pending", "done"]
    assert states[-1].data[4:8] == b"ftyp"


@pytest.mark.parametrize(("outcome", "state", "error", "code"), [
    ("failed", "failed", "Video generation failed: out of capacity", "provider_unavailable"),
    ("expired", "expired", "expired", "provider_unavailable"),
    ("withheld", "failed", "moderation", CONTENT_MODERATED),
])
async def test_video_failures_come_back_as_states(grok, xai, outcome, state, error, code) -> None:
    xai.video_polls_before_done = 0
    xai.video_outcome = outcome
    request_id = await grok.start_video(prompt="waves", seed=1, duration_seconds=3, image_url="https://img/x.jpg")
    assert xai.calls("POST /v1/videos/generations")[0].body["image"] == {"url": "https://img/x.jpg"}
    status = await grok.poll_video(request_id)
    assert status.state == state and error in status.error and status.data is None
    assert status.code == code


async def test_video_poll_5xx_is_retried_and_unknown_ids_are_permanent(grok, xai) -> None:
    xai.video_polls_before_done = 0
    request_id = await grok.start_video(prompt="waves", seed=1, duration_seconds=3)
    xai.fail("GET /v1/videos/", 502, error="bad gateway")
    assert (await grok.poll_video(request_id)).state == "done"
    with pytest.raises(ProviderError) as caught:
        await grok.poll_video("no-such-request")
    assert caught.value.status == 404 and not caught.value.transient


async def test_refused_credentials_do_not_reach_users(grok_settings, xai, caplog) -> None:
    from server.adapters.ai.base import ProviderError
    from server.adapters.ai.grok import GrokProvider

    xai.fail("POST /v1/images/generations", 401, error=f"Incorrect API key provided: {xai.api_key[:12]}***")
    provider = GrokProvider(grok_settings)
    try:
        with pytest.raises(ProviderError) as refused:
            await provider.generate_image(prompt="a lake", seed=1)
    finally:
        await provider.aclose()
    assert refused.value.transient is False and refused.value.code == CREDENTIALS
    assert xai.api_key[:12] not in refused.value.message  # what users see
    assert xai.api_key[:12] not in refused.value.user_message
    assert "refused this service's credentials" in refused.value.message
    assert any(xai.api_key[:12] in r.getMessage() for r in caplog.records)  # what operators see


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_are_credential_errors(grok, xai, status) -> None:
    xai.fail("POST /v1/chat/completions", status, error="Your API key or team is blocked")
    with pytest.raises(ProviderError) as caught:
        await grok.enhance_prompt(prompt="x", kind="image", profile=None)
    assert (caught.value.transient, caught.value.code) == (False, CREDENTIALS)
    assert caught.value.user_message == SERVICE_TROUBLE
    assert len(xai.calls("POST /v1/chat/completions")) == 1


@pytest.mark.parametrize("status", [429, 403])
async def test_used_up_credits_are_permanent_and_hidden(grok, xai, caplog, status) -> None:
    xai.fail_no_credits("POST /v1/images/generations", status=status, times=5)
    with pytest.raises(ProviderError) as caught:
        await grok.generate_image(prompt="x", seed=1)
    error = caught.value
    assert (error.transient, error.status, error.code) == (False, status, QUOTA_EXHAUSTED)
    assert xai.team_id not in error.message and xai.team_id not in error.user_message
    assert "spending limit" in caplog.text  # operators are told what to fix
    assert len(xai.calls("POST /v1/images/generations")) == 1  # never retried


async def test_rate_limits_back_off_without_retry_after(grok_settings, xai) -> None:
    provider = GrokProvider(grok_settings, backoff_seconds=0.05)
    xai.fail("POST /v1/images/generations", 429, times=2, error=RATE_LIMIT)  # no Retry-After
    try:
        image = await provider.generate_image(prompt="x", seed=1)
    finally:
        await provider.aclose()
    assert image.data[:3] == b"\xff\xd8\xff"
    first, second, third = (c.at for c in xai.calls("POST /v1/images/generations"))
    # Jittered exponential backoff, doubled for rate limits: 0.1 s +-25 %, then 0.2 s +-25 %.
    assert second - first >= 0.075 and third - second >= 0.15


async def test_rate_limits_past_the_retries_stay_transient(grok, xai) -> None:
    xai.fail("POST /v1/chat/completions", 429, times=10, error=RATE_LIMIT)
    with pytest.raises(ProviderError) as caught:
        await grok.enhance_prompt(prompt="x", kind="image", profile=None)
    assert (caught.value.transient, caught.value.code) == (True, RATE_LIMITED)
    assert len(xai.calls("POST /v1/chat/completions")) == grok.max_attempts


async def test_a_moderation_block_fails_once_with_its_own_code(grok, xai) -> None:
    xai.image_block_reason = "The generated image was flagged by our moderation system"
    with pytest.raises(ProviderError) as caught:
        await grok.generate_image(prompt="x", seed=1)
    error = caught.value
    assert (error.transient, error.code) == (False, CONTENT_MODERATED)
    assert "moderation" in error.user_message
    assert len(xai.calls("POST /v1/images/generations")) == 1


async def test_a_retired_model_is_refused_like_xai_does(grok_settings, xai, caplog) -> None:
    retired = grok_settings.model_copy(update={"grok_chat_model": "grok-4-fast-non-reasoning"})
    provider = GrokProvider(retired, backoff_seconds=0.01)
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.enhance_prompt(prompt="x", kind="image", profile=None)
    finally:
        await provider.aclose()
    assert (caught.value.transient, caught.value.status, caught.value.code) == (False, 404, MODEL_MISSING)
    assert caught.value.user_message == SERVICE_TROUBLE
    assert "grok-4-fast-non-reasoning does not exist" in caplog.text


async def test_model_check_finds_every_configured_model(grok) -> None:
    assert grok.model_status()["status"] == "unchecked"
    status = await grok.check_models()
    assert status["status"] == "ok" and status == grok.model_status()
    assert status["models"] == {"chat": grok.chat_model, "image": "grok-imagine-image",
                                "video": "grok-imagine-video"}


async def test_model_check_names_a_missing_model_and_never_raises(grok_settings, xai, caplog) -> None:
    retired = grok_settings.model_copy(update={"grok_chat_model": "grok-4-fast-non-reasoning"})
    provider = GrokProvider(retired, backoff_seconds=0.01)
    try:
        status = await provider.check_models()
    finally:
        await provider.aclose()
    assert status["status"] == "missing_models"
    assert status["missing"] == {"chat": "grok-4-fast-non-reasoning"}
    assert any(r.levelname == "ERROR" and "grok-4-fast-non-reasoning" in r.getMessage()
               and "GROK_CHAT_MODEL" in r.getMessage() for r in caplog.records)

    unreachable = grok_settings.model_copy(update={"grok_base_url": "http://127.0.0.1:9/v1"})
    provider = GrokProvider(unreachable, backoff_seconds=0.01)
    try:
        status = await provider.check_models()
    finally:
        await provider.aclose()
    assert status["status"] == "unverified"


async def test_health_shows_a_missing_model_without_failing(grok_settings, xai) -> None:
    retired = grok_settings.model_copy(update={"grok_chat_model": "grok-4-fast-non-reasoning"})
    server = await start_app(retired)
    api = Api(str(server.make_url("")).rstrip("/"))
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            health = await api.get("/health")
            if health.body["providers"]["ai"]["status"] != "unchecked":
                break
            assert asyncio.get_running_loop().time() < deadline, health
            await asyncio.sleep(0.05)
        assert health.status == 200 and health.body["status"] == "ok"  # the load balancer's view
        assert health.body["providers"]["ai"]["status"] == "missing_models"
        assert health.body["providers"]["ai"]["missing"] == {"chat": "grok-4-fast-non-reasoning"}
        assert len(xai.calls("GET /v1/models")) == 1
    finally:
        await api.close()
        await server.close()
