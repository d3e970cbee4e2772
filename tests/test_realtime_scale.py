"""Many sockets connecting at once: their reads share a few queries, and every event arrives once."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import uuid
from datetime import date
from pathlib import Path

import aiohttp
import pytest

from server import keys
from server.auth import revoked_sessions
from server.auth.tokens import decode_access_token, issue_access_token
from server.errors import TokenRevoked, Unauthorized
from server.realtime.admission import QUERIES
from server.realtime.feeds import CATCH_UP_SLICE
from server.realtime.server import hub_of
from tests.conftest import start_app
from tests.support.events import credits_event, emit_events
from tests.support.processes import ServerProcess
from tests.test_realtime import url_of


async def make_users(res, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    async with res.reader.acquire() as conn:
        await conn.executemany(
            "INSERT INTO users (id, email, password_hash, date_of_birth, email_verified) "
            "VALUES ($1, $2, 'x', $3, true)",
            [(i, f"scale-{i}@example.com", date(1990, 1, 1)) for i in ids])
        await conn.executemany("INSERT INTO user_credits (user_id) VALUES ($1)", [(i,) for i in ids])
    return ids


class CountingPool:
    """The reader pool, counting how many connections are held at once."""

    def __init__(self, pool) -> None:
        self.pool, self.held, self.peak, self.acquired = pool, 0, 0, 0

    @contextlib.asynccontextmanager
    async def acquire(self):
        async with self.pool.acquire() as conn:
            self.held += 1
            self.acquired += 1
            self.peak = max(self.peak, self.held)
            try:
                yield conn
            finally:
                self.held -= 1


async def test_sockets_admitted_together_share_one_query_with_each_ones_answer(app_server, settings) -> None:
    res = app_server.app[keys.resources]
    admissions = hub_of(app_server.app).admissions
    counting = CountingPool(res.reader)
    admissions.pool = lambda: counting
    users = await make_users(res, 300)
    for n, user in enumerate(users[:30]):  # a history of n + 1 events for the first 30
        await emit_events(res, user, [credits_event(i) for i in range(n + 1)])
    secret = settings.jwt_secret.get_secret_value()
    claims = [decode_access_token(issue_access_token(user_id=u, token_version=0, secret=secret, ttl=600), secret=secret,
                                  remember=False) for u in users]
    stale = decode_access_token(issue_access_token(user_id=users[40], token_version=1, secret=secret, ttl=600),
                                secret=secret, remember=False)
    stranger = decode_access_token(issue_access_token(user_id=uuid.uuid4(), token_version=0, secret=secret, ttl=600),
                                   secret=secret, remember=False)
    await revoked_sessions.revoke(res.redis, settings, session_ids=[claims[41].session_id])
    # The first 30 resume after their second-to-last event (or from 0); the rest connect fresh.
    afters = [max(n - 1, 0) if n < 30 else None for n in range(300)]

    results = await asyncio.gather(
        *(admissions.admit(c, a) for c, a in zip(claims, afters, strict=True)),
        admissions.admit(stale, None), admissions.admit(stranger, None), return_exceptions=True)

    assert counting.peak <= QUERIES and counting.acquired <= 2, (counting.peak, counting.acquired)
    for n, (user, result) in enumerate(zip(users, results[:300], strict=True)):
        if n == 41:
            assert isinstance(result, TokenRevoked)
            continue
        assert not isinstance(result, BaseException), (n, result)
        assert result.user.id == user
        if n < 30:
            assert result.latest == n + 1
            assert [seq for seq, _, _ in result.backlog] == list(range(afters[n] + 1, n + 2))
            assert all(payload["event_id"] == seq for seq, _, payload in result.backlog)
            assert not result.more
        else:
            assert (result.latest, result.backlog) == (0, [])
    assert isinstance(results[300], TokenRevoked)
    assert isinstance(results[301], Unauthorized)


async def test_a_connect_storm_with_events_committing_delivers_each_event_once_in_order(
        app_server, settings, sockets) -> None:
    res = app_server.app[keys.resources]
    secret = settings.jwt_secret.get_secret_value()
    users = await make_users(res, 40)
    for user in users:
        await emit_events(res, user, [credits_event(i) for i in range(3)])
    counting = CountingPool(res.reader)
    hub_of(app_server.app).admissions.pool = lambda: counting
    stop = asyncio.Event()

    async def keep_committing() -> None:
        n = 0
        while not stop.is_set():
            await emit_events(res, users[n % len(users)], [credits_event(n)])
            n += 1
            await asyncio.sleep(0.002)

    committing = asyncio.create_task(keep_committing())
    clients = [sockets() for _ in users]
    # Even-numbered users resume after event 1 (2 and 3 are replayed), odd ones connect fresh.
    await asyncio.gather(*(
        client.connect(url_of(app_server), token=issue_access_token(user_id=u, token_version=0, secret=secret, ttl=600),
                       **({"last_event_id": 1} if i % 2 == 0 else {}))
        for i, (client, u) in enumerate(zip(clients, users, strict=True))))
    async with res.reader.acquire() as conn:  # what a fresh client may already count as history
        at_connect = dict(await conn.fetch("SELECT user_id, event_seq FROM user_credits WHERE user_id = ANY($1)", users))
    await asyncio.sleep(0.3)  # let some events commit while everyone is connected
    stop.set()
    await committing
    async with res.reader.acquire() as conn:
        final = dict(await conn.fetch("SELECT user_id, event_seq FROM user_credits WHERE user_id = ANY($1)", users))
    for i, (client, user) in enumerate(zip(clients, users, strict=True)):
        ids: list[int] = []
        deadline = asyncio.get_running_loop().time() + 5
        while (not ids or ids[-1] < final[user]) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            ids = [p["event_id"] for _, p in client.events if isinstance(p, dict) and "event_id" in p]
        if i % 2 == 0:
            assert ids == list(range(2, final[user] + 1)), (i, ids, final[user])
        elif ids:  # fresh: everything after the newest id at connect, once, in order
            assert ids == list(range(ids[0], final[user] + 1)), (i, ids)
        else:  # nothing delivered: then nothing was committed once it was connected
            assert final[user] == at_connect[user], (i, final[user], at_connect[user])
    assert counting.peak <= QUERIES


async def test_health_answers_while_many_sockets_connect(app_server, settings, sockets) -> None:
    res = app_server.app[keys.resources]
    secret = settings.jwt_secret.get_secret_value()
    users = await make_users(res, 60)
    clients = [sockets() for _ in users]
    connecting = asyncio.gather(*(
        c.connect(url_of(app_server), token=issue_access_token(user_id=u, token_version=0, secret=secret, ttl=600))
        for c, u in zip(clients, users, strict=True)))
    statuses = []
    async with aiohttp.ClientSession() as http:
        while not connecting.done():
            async with http.get(url_of(app_server) + "/health") as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.01)
    await connecting
    assert statuses and set(statuses) == {200}
    assert all(c.sio.connected for c in clients)


async def test_the_served_listener_queues_a_reconnect_storm_of_handshakes(settings) -> None:
    """`lustify serve` listens with a backlog of 4,096 (the kernel's cap permitting), not aiohttp's 128."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("needs ss (iproute2) to read the listener's backlog")
    cap = int(await asyncio.to_thread(Path("/proc/sys/net/core/somaxconn").read_text))
    async with ServerProcess(settings) as server:
        listing = await asyncio.to_thread(subprocess.run, [ss, "-ltnH", f"sport = :{server.port}"],
                                          capture_output=True, text=True, check=True)
    out = listing.stdout.split()
    assert out[0] == "LISTEN" and int(out[2]) == min(4096, cap), out


async def test_the_catch_up_reads_every_feed_in_slices_and_finds_the_ones_behind(settings) -> None:
    server = await start_app(settings.model_copy(update={"realtime_catch_up_seconds": 3600}))
    try:
        res, realtime = server.app[keys.resources], hub_of(server.app)
        users = await make_users(res, CATCH_UP_SLICE + 500)
        for user in users:  # a connected user each, as a socket's connect leaves it
            realtime.feeds.join(str(user))
            await realtime.feeds.known(str(user), 0)
        behind = [users[3], users[CATCH_UP_SLICE + 400]]  # one in each slice: a publish never arrived
        async with res.reader.acquire() as conn:
            await conn.execute("UPDATE user_credits SET event_seq = 2 WHERE user_id = ANY($1)", behind)
        asked: list[int] = []
        read = realtime.feeds.behind

        async def counting(seen: dict[str, int]) -> dict[str, int]:
            asked.append(len(seen))
            return await read(seen)

        realtime.feeds.behind = counting
        assert await realtime.feeds.catch_up() == 2
        assert asked == [CATCH_UP_SLICE, 500]
        assert {u for u in map(str, behind) if realtime.feeds.feeds[u].filling} == set(map(str, behind))
    finally:
        await server.close()
