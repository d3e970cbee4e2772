"""Sliding-window rate limits in Redis: one Lua script, one round trip per request."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from aiohttp import web
from redis.asyncio import Redis

from server.client_address import ClientAddress, limit_key
from server.config import Settings
from server.errors import RateLimited

_RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d*)\s*(second|minute|hour|day)s?\s*$", re.I)
_UNIT = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# A sliding-window counter: the previous window's count, weighted by how much of it still
# overlaps the last `window` ms, plus the current window's. Unlike a fixed window it never
# lets a burst of twice the limit through across a window edge, and it stays two small
# counters per client. A refused request is not counted. Answers {allowed, used, ms to wait}.
_HIT = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local into = tonumber(ARGV[3])
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local overlap = (window - into) / window
local used = previous * overlap + current
if used + 1 > limit then
  local wait = window - into
  if current + 1 <= limit and previous > 0 then
    -- until enough of the previous window has slid out
    wait = math.max(1, (window - into) - math.floor((limit - 1 - current) * window / previous))
  elseif current + 1 > limit then
    wait = (window - into) + math.floor(window * (current + 1 - limit) / current)
  end
  return {0, math.ceil(used), wait}
end
current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('PEXPIRE', KEYS[1], window * 2) end
return {1, math.ceil(used + 1), window - into}
"""


@dataclass(frozen=True)
class Rate:
    amount: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _RATE.match(text)
        if not match:
            raise ValueError(f"rate limit {text!r} is not like '5/minute' or '100/15minutes'")
        amount, multiple, unit = match.groups()
        return cls(int(amount), int(multiple or 1) * _UNIT[unit.lower()])


@dataclass(frozen=True)
class Verdict:
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


class RateLimiter:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.enabled = settings.rate_limit_enabled
        self.rates = {
            "auth": Rate.parse(settings.rate_limit_auth),
            "api": Rate.parse(settings.rate_limit_api),
            "generation": Rate.parse(settings.rate_limit_generation),
            "mail": Rate.parse(settings.rate_limit_mail),
        }
        self.client_ip = ClientAddress(settings.trusted_proxies)
        self._script = redis.register_script(_HIT)

    async def hit(self, policy: str, identity: str) -> Verdict | None:
        """Count one request of `identity` under `policy`; raise RateLimited past the limit."""
        if not self.enabled:
            return None
        rate = self.rates[policy]
        window_ms = rate.seconds * 1000
        now_ms = int(time.time() * 1000)
        window = now_ms // window_ms
        keys = [self.settings.key("rl", policy, identity, window), self.settings.key("rl", policy, identity, window - 1)]
        allowed, used, wait_ms = await self._script(keys=keys, args=[rate.amount, window_ms, now_ms % window_ms])
        reset = max(1, math.ceil(int(wait_ms) / 1000))
        verdict = Verdict(rate.amount, max(0, rate.amount - int(used)), reset)
        if not int(allowed):
            raise RateLimited(
                f"Too many requests; retry in {reset} s",
                headers={"Retry-After": str(reset), **verdict.headers()},
            )
        return verdict

    async def hit_account(self, email: str, action: str) -> Verdict | None:
        """Count a sign-in, sign-up or reset attempt for one address, whatever IP it comes from;
        each action apart, so others asking for resets cannot lock the owner out of signing in."""
        return await self.hit("auth", f"email:{action}:{email}")

    async def mailbox_allows(self, email: str, *, asked_by: str) -> bool:
        """Whether to send one more email to this address on this requester's behalf; past the
        limit the request still succeeds and the email is skipped, so nobody can flood an inbox,
        nor lock its owner out of their own emails by asking first (each requester counts apart)."""
        try:
            await self.hit("mail", f"to:{email}:by:{asked_by}")
        except RateLimited:
            return False
        return True

    def requester(self, request: web.Request, *, user_id: object = None) -> str:
        """Who is asking, as rate limits count them: the signed-in user, else the client's address block."""
        return f"user:{user_id}" if user_id else f"ip:{limit_key(self.client_ip(request))}"

    async def hit_request(self, request: web.Request, policy: str, *, user_id: object = None) -> Verdict | None:
        """Count a request: per user where signed in (not for auth routes), else per client IP."""
        identity = self.requester(request, user_id=user_id if policy != "auth" else None)
        return await self.hit(policy, identity)
