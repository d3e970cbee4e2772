"""Multi-step user flows shared by tests: wait for content or an avatar to settle, read a balance."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.api import Api, User

FINAL = ("completed", "failed", "canceled")


async def wait_for_content(api: Api, user: User, content_id: str, *, statuses=FINAL,
                           timeout: float = 30) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        reply = await api.get(f"/api/content/{content_id}", token=user.access_token)
        assert reply.status == 200, reply
        if reply.body["status"] in statuses:
            return reply.body
        if loop.time() > deadline:
            raise AssertionError(f"content stayed {reply.body['status']}: {reply.body}")
        await asyncio.sleep(0.05)


async def wait_for_avatar(api: Api, user: User, avatar_id: str, *, timeout: float = 20) -> dict[str, Any]:
    """The avatar once it has left `creating` (ready or failed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        reply = await api.get(f"/api/avatars/{avatar_id}", token=user.access_token)
        assert reply.status == 200, reply
        if reply.body["status"] != "creating":
            return reply.body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"avatar stayed creating: {reply.body}")
        await asyncio.sleep(0.05)


async def balance(api: Api, user: User) -> int:
    reply = await api.get("/api/auth/profile", token=user.access_token)
    assert reply.status == 200, reply
    return reply.body["credits"]["balance"]
