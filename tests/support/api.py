"""A small HTTP client that talks to the running app like a studio frontend does."""

from __future__ import annotations

import asyncio
import email
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body!r})"


@dataclass
class User:
    email: str
    password: str
    id: str
    access_token: str
    refresh_token: str
    data: dict = field(default_factory=dict)


class Api:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.http.close()

    async def request(self, method: str, path: str, *, json: Any = None, token: str | None = None,
                      headers: dict[str, str] | None = None, data: Any = None) -> Reply:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        async with self.http.request(method, self.base_url + path, json=json, data=data,
                                     headers=hdrs) as resp:
            raw = await resp.read()
            try:
                body: Any = await resp.json(content_type=None) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            return Reply(resp.status, body, resp.headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.request("POST", path, **kw)

    async def put(self, path: str, **kw: Any) -> Reply:
        return await self.request("PUT", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)

    async def register(self, *, email: str | None = None, password: str = "correct horse battery",
                       **extra: Any) -> User:
        """Sign up (202, no tokens: API.md) and sign in; the account is not verified yet."""
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        reply = await self.post("/api/auth/register", json={
            "email": email, "password": password, "date_of_birth": "1990-01-01", **extra})
        assert reply.status == 202, reply
        return await self.login(email=email.strip().lower(), password=password)

    async def login(self, *, email: str, password: str) -> User:
        reply = await self.post("/api/auth/login", json={"email": email, "password": password})
        assert reply.status == 200, reply
        return User(email, password, reply.body["user"]["id"], reply.body["access_token"],
                    reply.body["refresh_token"], reply.body)


def emails_in(outbox: Path, to: str) -> list[email.message.Message]:
    found = []
    for path in sorted(outbox.glob("*.eml")) if outbox.exists() else []:
        message = email.message_from_bytes(path.read_bytes())
        if message["To"] == to:
            found.append(message)
    return found


async def wait_for_email(outbox: Path, to: str, *, count: int = 1, timeout: float = 10) -> email.message.Message:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = emails_in(outbox, to)
        if len(found) >= count:
            return found[count - 1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no email #{count} to {to} in {outbox}")


def verify_token_from(message: email.message.Message) -> str:
    match = re.search(r"/api/auth/verify-email/([A-Za-z0-9_\-%]+)", message.get_payload(decode=True).decode())
    assert match, "no verification link in the email"
    return match.group(1)


async def verified_user(api: Api, outbox: Path, **kw: Any) -> User:
    """Register and follow the emailed link (needs a running worker)."""
    user = await api.register(**kw)
    token = verify_token_from(await wait_for_email(outbox, user.email))
    reply = await api.get(f"/api/auth/verify-email/{token}")
    assert reply.status == 200, reply
    return user
