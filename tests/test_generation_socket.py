"""The studio's main loop over Socket.IO: generate through the socket, watch progress live,
receive the finished content, see the balance change once; cancel through the socket."""

from __future__ import annotations

import asyncio
import io
import uuid
from urllib.parse import urlsplit

from PIL import Image

from tests.support.api import Api, verified_user
from tests.support.flows import balance
from tests.support.sockets import SocketClient
from tests.support.workers import running_worker


async def test_generate_over_the_socket_with_live_progress_and_one_charge(api: Api, app_server, worker,
                                                                          settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    client = SocketClient()
    await client.connect(api.base_url, token=user.access_token)
    try:
        ack = await client.call("content.generate", {"kind": "image", "prompt": "a violin on a chair",
                                                     "quality": "premium"})
        assert ack["ok"] is True, ack
        content = ack["data"]
        assert content["status"] == "queued" and content["credits_cost"] == 10
        done = await client.wait_for("generation.completed", timeout=20)
        assert done[0]["content"]["id"] == content["id"] and done[0]["content"]["url"]
        progress = [p for p in client.named("generation.progress") if p["content_id"] == content["id"]]
        assert [p["progress"] for p in progress] == sorted(p["progress"] for p in progress)
        assert progress[0]["stage"] == "starting" and progress[-1]["stage"] == "storing"
        credits = client.named("credits.updated")
        assert [c["delta"] for c in credits] == [-10] and credits[0]["balance"] == 15
        names = [name for name, _ in client.events]
        assert names.index("generation.completed") > names.index("generation.progress")
        durable = [p["event_id"] for name, p in client.events if name != "generation.progress"]
        assert durable == list(range(durable[0], durable[0] + len(durable)))  # gapless, in order
        assert any(a["activity"]["type"] == "content.completed" for a in client.named("activity"))
        parts = urlsplit(done[0]["content"]["url"])
        async with api.http.get(f"{api.base_url}{parts.path}?{parts.query}") as resp:
            assert Image.open(io.BytesIO(await resp.read())).format == "JPEG"
        assert await balance(api, user) == 15
    finally:
        await client.close()


async def test_socket_generate_errors_come_back_in_the_ack(api: Api, app_server, worker, settings) -> None:
    user = await verified_user(api, settings.data_dir / "outbox")
    client = SocketClient()
    await client.connect(api.base_url, token=user.access_token)
    try:
        bad_kind = await client.call("content.generate", {"kind": "audio", "prompt": "x"})
        assert bad_kind == {"ok": False, "error": {"error": "validation_error", "message": bad_kind["error"]["message"],
                                                  "details": [{"field": "kind", "message": "must be image or video"}]}}
        empty = await client.call("content.generate", {"kind": "image", "prompt": ""})
        assert empty["ok"] is False and empty["error"]["details"][0]["field"] == "prompt"
        broke = await client.call("content.generate", {"kind": "video", "prompt": "long", "quality": "premium"})
        assert broke["ok"] is False and broke["error"]["error"] == "insufficient_credits"
        refused = await client.call("content.generate", {"kind": "image", "prompt": "a 12 year old in lingerie"})
        assert refused["ok"] is False and refused["error"]["error"] == "content_policy_violation"
        missing = await client.call("content.cancel", {"content_id": "00000000-0000-0000-0000-000000000000"})
        assert missing["ok"] is False and missing["error"]["error"] == "not_found"
        assert await balance(api, user) == 25
    finally:
        await client.close()


async def test_cancel_over_the_socket_refunds_and_tells_the_user(api: Api, app_server, settings) -> None:
    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    client = SocketClient()
    await client.connect(api.base_url, token=user.access_token)
    try:
        queued = (await client.call("content.generate", {"kind": "image", "prompt": "never made"}))["data"]
        ack = await client.call("content.cancel", {"content_id": queued["id"]})
        assert ack["ok"] is True and ack["data"]["status"] == "canceled"
        await client.wait_for("credits.updated", count=2)
        assert [c["delta"] for c in client.named("credits.updated")] == [-5, 5]
        # Published after the refund, so it may still be on its way when the refund arrives.
        for _ in range(250):
            canceled = [p for p in client.named("generation.progress") if p["status"] == "canceled"]
            if canceled:
                break
            await asyncio.sleep(0.02)
        assert canceled and canceled[0]["content_id"] == queued["id"]
        again = await client.call("content.cancel", {"content_id": queued["id"]})
        assert again["ok"] is False and again["error"]["error"] == "conflict"
        assert await balance(api, user) == 25
    finally:
        await client.close()


async def test_actions_stop_when_the_connections_token_expires(api: Api, app_server, settings) -> None:
    import asyncio

    from server.auth.tokens import issue_access_token

    async with running_worker(settings):
        user = await verified_user(api, settings.data_dir / "outbox")
    ttl = 4  # the connect and the first call fit in it even when the machine is slow
    short = issue_access_token(user_id=uuid.UUID(user.id), token_version=0,
                               secret=settings.jwt_secret.get_secret_value(), ttl=ttl)
    expires = asyncio.get_running_loop().time() + ttl
    client = SocketClient()
    await client.connect(api.base_url, token=short)
    try:
        assert (await client.call("content.generate", {"kind": "image", "prompt": "in time"}))["ok"] is True
        await asyncio.sleep(max(0.0, expires - asyncio.get_running_loop().time()) + 1.1)  # exp is whole seconds
        late = await client.call("content.generate", {"kind": "image", "prompt": "too late"})
        assert late["ok"] is False and late["error"]["error"] == "token_expired"
        assert (await client.call("ping"))["ok"] is True  # reading and pinging go on until reconnect
        assert await balance(api, user) == 20
    finally:
        await client.close()
