"""Every text on its way to a model is screened: prompts, avatars on create and on every
update, and the model's own output; with Grok configured a classifier call (against the fake
xAI server) judges what the rules let through, and when it cannot answer nothing is sent."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from sqlalchemy import text, update

from db.models import GeneratedContent
from db.session import transaction
from server import keys
from server.adapters.ai.base import ProviderError
from server.moderation import Moderator
from server.moderation.classifier import (
    SCHEMA_NAME,
    ClassifierUnavailable,
    GrokClassifier,
    RulesOnly,
    make_classifier,
)
from tests.conftest import grok_settings
from tests.support.api import Api, verified_user
from tests.support.flows import balance, wait_for_avatar, wait_for_content
from tests.support.sockets import SocketClient

AVATAR = {"name": "Mara", "age": 27, "description": "A travelling photographer", "style": "streetwear"}


async def content_total(api: Api, user) -> int:
    return (await api.get("/api/content", token=user.access_token)).body["total"]


# --- the classifier alone, against the fake xAI server -------------------------------------

async def test_the_classifier_asks_for_a_strict_verdict_with_the_chat_model(settings, xai) -> None:
    classifier = GrokClassifier(grok_settings(settings, xai, grok_chat_model="grok-4.3"))
    try:
        assert (await classifier.classify(context="prompt", fields={"prompt": "a lighthouse"})).allowed
        xai.classifier_flags["velvet"] = "real_people"
        verdict = await classifier.classify(context="avatar", fields={"description": "Velvet from the news"})
        assert not verdict.allowed and verdict.category == "real_people"
    finally:
        await classifier.aclose()
    first, second = xai.classifier_calls()
    assert first.headers["Authorization"] == f"Bearer {xai.api_key}"
    assert first.body["model"] == "grok-4.3" and first.body["temperature"] == 0
    spec = first.body["response_format"]
    assert spec["type"] == "json_schema" and spec["json_schema"]["name"] == SCHEMA_NAME
    assert spec["json_schema"]["strict"] is True
    assert set(spec["json_schema"]["schema"]["properties"]["category"]["enum"]) == {
        "none", "minors", "non_consent", "real_people", "bestiality", "incest"}
    assert '"context":"avatar"' in second.body["messages"][-1]["content"]
    assert xai.api_key not in repr(classifier)


@pytest.mark.parametrize("mode", ["malformed", "not_json", "refusal", "error"])
async def test_a_broken_answer_is_no_verdict(settings, xai, mode) -> None:
    xai.classifier_mode = mode
    classifier = GrokClassifier(grok_settings(settings, xai))
    try:
        with pytest.raises(ClassifierUnavailable):
            await classifier.classify(context="prompt", fields={"prompt": "a lighthouse"})
    finally:
        await classifier.aclose()


async def test_a_slow_classifier_times_out(settings, xai) -> None:
    xai.classifier_mode, xai.classifier_delay_seconds = "slow", 5.0
    classifier = GrokClassifier(grok_settings(settings, xai, moderation_timeout_seconds=0.3))
    started = time.monotonic()
    try:
        with pytest.raises(ClassifierUnavailable):
            await classifier.classify(context="prompt", fields={"prompt": "a lighthouse"})
    finally:
        await classifier.aclose()
    assert time.monotonic() - started < 2.0


async def test_an_unreachable_classifier_is_no_verdict(settings, xai) -> None:
    configured = grok_settings(settings, xai)
    await xai.close()  # nothing listens there any more
    classifier = GrokClassifier(configured)
    try:
        with pytest.raises(ClassifierUnavailable):
            await classifier.classify(context="prompt", fields={"prompt": "a lighthouse"})
    finally:
        await classifier.aclose()


def test_the_classifier_is_chosen_once_from_settings(settings, xai) -> None:
    assert isinstance(make_classifier(settings), RulesOnly)
    assert isinstance(make_classifier(grok_settings(settings, xai)), GrokClassifier)


async def test_model_output_refusals_fail_the_job_and_missing_verdicts_retry_it(settings, xai) -> None:
    moderator = Moderator(classifier=GrokClassifier(grok_settings(settings, xai)))
    try:
        await moderator.screen_enhanced_prompt("a lighthouse at dawn", user_id="u-1")
        with pytest.raises(ProviderError) as refused:  # rules
            await moderator.screen_enhanced_prompt("Lolita, a model, in lingerie", user_id="u-1")
        assert not refused.value.transient and "(minors)" in refused.value.message
        assert "lolita" not in refused.value.message.lower()
        xai.classifier_flags["harbour"] = "non_consent"
        with pytest.raises(ProviderError) as flagged:  # classifier
            await moderator.screen_profile({"identity": "Ana, 30", "backstory": "grew up by the harbour"}, user_id="u-1")
        assert not flagged.value.transient and "(non_consent)" in flagged.value.message
        xai.classifier_mode = "malformed"
        with pytest.raises(ProviderError) as unscreened:
            await moderator.screen_enhanced_prompt("a lighthouse at dusk", user_id="u-1")
        assert unscreened.value.transient
        # A text allowed moments ago is not sent again (the request screened before its transaction).
        await moderator.screen_enhanced_prompt("a lighthouse at dawn", user_id="u-1")
    finally:
        await moderator.aclose()


async def test_a_profile_may_mention_a_childhood_but_must_describe_an_adult() -> None:
    moderator = Moderator(classifier=RulesOnly())
    await moderator.screen_profile({"identity": "Ana, a 30-year-old adult", "backstory": "As a child she painted."},
                                   user_id=None)
    with pytest.raises(ProviderError):
        await moderator.screen_profile({"identity": "Ana, a 16-year-old girl", "backstory": "She paints."}, user_id=None)
    with pytest.raises(ProviderError):
        await moderator.screen_profile({"identity": "Ana, 30", "style": "lingerie", "backstory": "a schoolgirl"},
                                       user_id=None)


# --- through the app, with Grok configured ---------------------------------------------------

async def test_the_classifier_refuses_what_the_rules_let_through_and_nothing_is_charged(grok_app, xai) -> None:
    api, server, user = grok_app
    xai.classifier_flags["midnight orchid"] = "minors"
    reply = await api.post("/api/content/generate/image", token=user.access_token,
                           json={"prompt": "the midnight orchid girl, sensual"})
    assert reply.status == 422 and reply.body["error"] == "content_policy_violation"
    assert reply.body["details"][0]["category"] == "minors" and reply.body["details"][0]["field"] == "prompt"
    assert "orchid" not in reply.body["message"] + str(reply.body["details"])
    assert await balance(api, user) == 25 and await content_total(api, user) == 0
    assert xai.calls("POST /v1/images/generations") == []
    before = len(xai.classifier_calls())
    refused_by_rules = await api.post("/api/content/generate/image", token=user.access_token,
                                      json={"prompt": "a nude ꓡꓳꓡꓲ"})
    assert refused_by_rules.status == 422 and refused_by_rules.body["details"][0]["category"] == "minors"
    assert len(xai.classifier_calls()) == before  # the rules refused: no classifier call was paid


@pytest.mark.parametrize("mode", ["slow", "malformed", "error"])
async def test_without_a_verdict_the_request_is_refused_as_retryable(grok_app, xai, mode) -> None:
    api, server, user = grok_app
    xai.classifier_mode, xai.classifier_delay_seconds = mode, 5.0
    started = time.monotonic()
    reply = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "a lighthouse"})
    assert reply.status == 503 and reply.body["error"] == "service_unavailable", reply
    assert reply.headers["Retry-After"] == "5"
    assert reply.body["details"] == [{"reason": "content_screening_unavailable", "retry_after": 5}]
    assert time.monotonic() - started < 4.0  # MODERATION_TIMEOUT_SECONDS is 1 here
    assert await balance(api, user) == 25 and await content_total(api, user) == 0
    xai.classifier_mode = "answer"
    again = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "a lighthouse"})
    assert again.status == 202
    assert (await wait_for_content(api, user, again.body["id"]))["status"] == "completed"


async def test_no_database_transaction_waits_on_the_classifier(grok_app, xai, settings) -> None:
    api, server, user = grok_app
    xai.classifier_mode, xai.classifier_delay_seconds = "slow", 5.0  # past the 1 s timeout
    app_name = f"screening-{uuid.uuid4().hex[:8]}"
    post = asyncio.create_task(api.post("/api/content/generate/image", token=user.access_token,
                                        json={"prompt": "a lighthouse"}))
    deadline = time.monotonic() + 10
    while not xai.classifier_calls():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    conn = await asyncpg.connect(settings.database_url, server_settings={"application_name": app_name})
    try:
        await asyncio.sleep(0.4)  # well into the wait for the classifier
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name <> $1 "
            "AND state LIKE 'idle in transaction%' AND now() - state_change > interval '200 milliseconds'", app_name)
    finally:
        await conn.close()
    assert waiting == 0
    assert (await post).status == 503


async def test_avatars_are_screened_whole_on_create_and_on_every_update(grok_app, xai) -> None:
    api, server, user = grok_app
    xai.classifier_flags["ballet recital"] = "minors"
    refused = await api.post("/api/avatars", token=user.access_token,
                             json={**AVATAR, "description": "loves her ballet recital"})
    assert refused.status == 422 and refused.body["details"][0]["category"] == "minors"
    assert await balance(api, user) == 25
    avatar = (await api.post("/api/avatars", token=user.access_token,
                             json={**AVATAR, "description": "loves her stepsister"})).body
    assert avatar["status"] == "creating"
    # Its profile job screens what it writes and changes the avatar: let it finish first, so
    # the updates below neither race it (409) nor have their verdicts follow its own.
    current = await wait_for_avatar(api, user, avatar["id"])
    assert current["status"] == "ready", current
    calls = len(xai.classifier_calls())
    # Alone, "kinky" is fine; with the description already there it is step-family incest.
    update = await api.put(f"/api/avatars/{avatar['id']}", token=user.access_token,
                           json={"personality": "kinky and seductive"})
    assert update.status == 422 and update.body["details"][0]["category"] == "incest"
    fine = await api.put(f"/api/avatars/{avatar['id']}", token=user.access_token, json={"personality": "calm"})
    assert fine.status == 200 and fine.body["personality"] == "calm"
    last = xai.classifier_calls()[-1].body["messages"][-1]["content"]
    assert "stepsister" in last and "calm" in last and '"age":"27"' in last  # the whole avatar was judged
    assert len(xai.classifier_calls()) > calls
    flagged = await api.put(f"/api/avatars/{avatar['id']}", token=user.access_token,
                            json={"style": "ballet recital chic"})
    assert flagged.status == 422 and flagged.body["details"][0]["category"] == "minors"
    current = (await api.get(f"/api/avatars/{avatar['id']}", token=user.access_token)).body
    assert current["style"] == AVATAR["style"] and current["personality"] == "calm"
    untouched = await api.put(f"/api/avatars/{avatar['id']}", token=user.access_token, json={"age": 30})
    assert untouched.status == 200 and untouched.body["age"] == 30


async def test_a_refused_enhanced_prompt_fails_the_generation_and_refunds(grok_app, xai) -> None:
    api, server, user = grok_app
    # The fake's rewrite appends "golden hour light": only the model's output carries it.
    xai.classifier_flags["golden hour light"] = "non_consent"
    queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "a quiet harbor"})
    assert queued.status == 202
    done = await wait_for_content(api, user, queued.body["id"])
    assert done["status"] == "failed" and "content policy (non_consent)" in done["error"]
    assert done["enhanced_prompt"] is None and done["attempts"] == 1
    assert xai.calls("POST /v1/images/generations") == []
    assert await balance(api, user) == 25


async def test_a_refused_profile_fails_the_avatar_and_refunds(grok_app, xai) -> None:
    api, server, user = grok_app
    xai.classifier_flags["copper hair"] = "real_people"  # only the fake's generated profile says it
    avatar = (await api.post("/api/avatars", token=user.access_token, json=AVATAR)).body
    failed = await wait_for_avatar(api, user, avatar["id"])
    assert failed["status"] == "failed" and "content policy (real_people)" in failed["error"]
    assert failed["profile"] is None  # never saved
    assert xai.calls("POST /v1/images/generations") == []
    assert await balance(api, user) == 25


async def test_socket_generation_gets_the_same_refusals(grok_app, xai) -> None:
    api, server, user = grok_app
    client = SocketClient()
    await client.connect(api.base_url, token=user.access_token)
    try:
        xai.classifier_flags["tin soldier"] = "minors"
        refused = await client.call("content.generate", {"kind": "image", "prompt": "tin soldier, sensual"})
        assert refused["ok"] is False and refused["error"]["error"] == "content_policy_violation"
        assert refused["error"]["details"][0]["category"] == "minors"
        xai.classifier_mode = "error"
        unscreened = await client.call("content.generate", {"kind": "image", "prompt": "a lighthouse"})
        assert unscreened["ok"] is False and unscreened["error"]["error"] == "service_unavailable"
        assert unscreened["error"]["details"][0]["retry_after"] == 5
        assert await balance(api, user) == 25
    finally:
        await client.close()


# --- rules only (no Grok): the model's output, updates, retries, 18+ --------------------------

async def test_an_enhanced_prompt_that_combines_into_a_refusal_is_never_sent(api, app_server, worker, settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    avatar = (await api.post("/api/avatars", token=user.access_token,
                             json={**AVATAR, "name": "Lolita"})).body  # a name alone is fine
    ready = await wait_for_avatar(api, user, avatar["id"])
    assert ready["status"] == "ready"
    queued = await api.post("/api/content/generate/image", token=user.access_token,
                            json={"prompt": "in lingerie on a sofa", "avatar_id": avatar["id"]})
    assert queued.status == 202  # the user's words pass; the rewrite (name + lingerie) does not
    done = await wait_for_content(api, user, queued.body["id"])
    assert done["status"] == "failed" and "content policy (minors)" in done["error"]
    assert done["url"] is None and await balance(api, user) == 25 - 10




async def test_retry_screens_the_prompt_again(api, app_server, worker, settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    queued = await api.post("/api/content/generate/image", token=user.access_token, json={"prompt": "a lighthouse"})
    await wait_for_content(api, user, queued.body["id"])
    async with transaction(app_server.app[keys.resources].sessionmaker) as session:
        # As if the prompt were accepted under older rules and the content then failed.
        await session.execute(update(GeneratedContent).where(GeneratedContent.id == uuid.UUID(queued.body["id"]))
                              .values(status="failed", prompt="a nude ꓡꓳꓡꓲ"))
    before = await balance(api, user)
    reply = await api.post(f"/api/content/{queued.body['id']}/retry", token=user.access_token)
    assert reply.status == 422 and reply.body["details"][0]["category"] == "minors"
    assert await balance(api, user) == before
    row = (await api.get(f"/api/content/{queued.body['id']}", token=user.access_token)).body
    assert row["status"] == "failed"


async def test_avatars_and_users_stay_adults_everywhere(api, app_server, worker, settings) -> None:
    minor = await api.post("/api/auth/register", json={
        "email": f"dob-{uuid.uuid4().hex[:8]}@example.com", "password": "long enough pw",
        "date_of_birth": f"{time.gmtime().tm_year - 17}-06-01"})
    assert minor.status == 400 and minor.body["details"][0]["field"] == "date_of_birth"
    user = await verified_user(api, settings.data_dir / "outbox")
    for body, status, field in [
        ({**AVATAR, "age": 17}, 400, "age"),
        ({**AVATAR, "appearance": {"apparent_age": 15}}, 422, "appearance"),
        ({**AVATAR, "description": "born in 2014, loves drawing"}, 422, "description"),
        ({**AVATAR, "description": "she is a teenager"}, 422, "description"),
        ({**AVATAR, "personality": "naive ученица 8 класса"}, 422, "personality"),
    ]:
        reply = await api.post("/api/avatars", token=user.access_token, json=body)
        assert reply.status == status and reply.body["details"][0]["field"].startswith(field), (body, reply)
    avatar = (await api.post("/api/avatars", token=user.access_token, json=AVATAR)).body
    younger = await api.put(f"/api/avatars/{avatar['id']}", token=user.access_token, json={"age": 16})
    assert younger.status == 400
    described = await api.put(f"/api/avatars/{avatar['id']}", token=user.access_token,
                              json={"description": "she just turned 15"})
    assert described.status == 422 and described.body["details"][0]["category"] == "minors"
    async with transaction(app_server.app[keys.resources].sessionmaker) as session:
        with pytest.raises(Exception, match="adult"):  # the database refuses too
            async with session.begin_nested():
                await session.execute(text("UPDATE avatars SET age = 16 WHERE id = :id"), {"id": avatar["id"]})
    assert await balance(api, user) == 25 - 10


async def test_an_update_judged_on_words_changed_meanwhile_is_refused_not_applied(grok_app, xai) -> None:
    """Two updates race: the slow one was judged against the old description, so it must not
    land on the new one (409); the worker's own changes to the avatar do not count."""
    api, server, user = grok_app
    avatar = (await api.post("/api/avatars", token=user.access_token, json=AVATAR)).body
    xai.classifier_mode, xai.classifier_delay_seconds = "slow", 0.8
    slow = asyncio.create_task(api.put(f"/api/avatars/{avatar['id']}", token=user.access_token,
                                       json={"style": "evening gown"}))
    for _ in range(100):  # until the slow update is waiting for its verdict
        if any("evening gown" in str(call.body) for call in xai.classifier_calls()):
            break
        await asyncio.sleep(0.02)
    xai.classifier_mode = "answer"
    quick = await api.put(f"/api/avatars/{avatar['id']}", token=user.access_token,
                          json={"description": "a lighthouse keeper"})
    assert quick.status == 200
    late = await slow
    assert late.status == 409 and late.body["error"] == "conflict"
    current = (await api.get(f"/api/avatars/{avatar['id']}", token=user.access_token)).body
    assert current["description"] == "a lighthouse keeper" and current["style"] == AVATAR["style"]


@pytest.mark.parametrize("channel", ["rest", "socket"])
async def test_a_keyed_request_holds_no_database_connection_while_the_classifier_thinks(
        grok_app, xai, settings, channel) -> None:
    api, server, user = grok_app
    xai.classifier_mode, xai.classifier_delay_seconds = "slow", 0.8  # under the 1 s timeout
    before = len(xai.classifier_calls())
    socket = None
    if channel == "rest":
        sent = asyncio.create_task(api.post("/api/content/generate/image", token=user.access_token,
                                            json={"prompt": "a lamp by a window"}, headers={"Idempotency-Key": "k1"}))
    else:
        socket = SocketClient()
        await socket.connect(str(server.make_url("")).rstrip("/"), token=user.access_token)
        sent = asyncio.create_task(socket.call("content.generate", {
            "kind": "image", "prompt": "a lamp by a window", "request_id": "k1"}))
    try:
        deadline = time.monotonic() + 5
        while len(xai.classifier_calls()) == before:  # until the request waits for its verdict
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        conn = await asyncpg.connect(settings.database_url)
        try:
            open_transactions = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")
        finally:
            await conn.close()
        assert open_transactions == 0
        answer = await sent
        accepted = answer.status == 202 if channel == "rest" else answer["ok"] is True
        assert accepted, answer
    finally:
        if socket is not None:
            await socket.close()


async def test_a_retry_gets_its_first_answer_even_when_screening_is_down(grok_app, xai) -> None:
    api, server, user = grok_app
    body, key = {"prompt": "a kettle on a stove"}, {"Idempotency-Key": "retry-1"}
    first = await api.post("/api/content/generate/image", token=user.access_token, json=body, headers=key)
    assert first.status == 202, first
    calls = len(xai.classifier_calls())
    xai.classifier_mode = "error"  # the classifier is down: a new request would get 503
    again = await api.post("/api/content/generate/image", token=user.access_token, json=body, headers=key)
    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true" and again.body == first.body
    fresh = await api.post("/api/content/generate/image", token=user.access_token,
                           json={"prompt": "a kettle on a table"}, headers={"Idempotency-Key": "retry-2"})
    assert fresh.status == 503, fresh
    assert len(xai.classifier_calls()) == calls + 1  # only the new request asked it (once: no retry inside)
