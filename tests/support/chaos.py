"""The fault scenario shared by tests/test_chaos.py and `python -m bench.chaos`.

Two `lustify serve` processes and two workers on a PostgreSQL and a Redis of their own;
users with a socket each; generations submitted at a steady rate (retried with their
Idempotency-Key on 503, as a client would) while Redis is SIGKILLed and restarted,
PostgreSQL restarted, one worker SIGKILLed and another SIGTERMed. Then it checks what the
product promises: every generation ends, money is exact, every durable event reached
the connected client once, in order, without a reconnect, and no request saw a 500.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import socketio

from server.auth.tokens import issue_access_token
from server.config import Settings
from tests.support.funded_users import insert_funded_users
from tests.support.processes import ServerProcess, WorkerProcess
from tests.support.services import OwnPostgres, OwnRedis

TERMINAL = ("completed", "failed", "canceled")


@dataclass
class Report:
    submitted: int = 0
    accepted: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    settled_after_last_fault: float = 0.0
    recovery: dict[str, float] = field(default_factory=dict)
    charged_twice: list[str] = field(default_factory=list)
    refund_mismatch: list[str] = field(default_factory=list)
    ledger_drift: int = 0
    missing_events: dict[str, list[int]] = field(default_factory=dict)
    duplicate_events: int = 0
    out_of_order: int = 0
    # Around the first repeat or step back of a user's ids: (event_id, event) as received.
    event_trails: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    reconnects: int = 0
    unsettled: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # the log of each 500

    def problems(self) -> list[str]:
        found = []
        if self.statuses.get(500) or self.server_errors:
            found.append(f"{self.statuses.get(500, 0)} responses were 500: {self.server_errors[:2]}")
        for name in ("charged_twice", "refund_mismatch", "unsettled"):
            if getattr(self, name):
                found.append(f"{name}: {getattr(self, name)[:5]}")
        if self.ledger_drift:
            found.append(f"{self.ledger_drift} balances differ from their ledger")
        if self.missing_events:
            found.append(f"missing durable events: {dict(list(self.missing_events.items())[:3])}")
        if self.duplicate_events or self.out_of_order:
            found.append(f"{self.duplicate_events} duplicate, {self.out_of_order} out-of-order events: "
                         f"{dict(list(self.event_trails.items())[:2])}")
        if self.reconnects:
            found.append(f"{self.reconnects} sockets were disconnected")
        return found


class Client:
    """One user's studio: a socket that records every event, never reconnecting by itself."""

    def __init__(self, user_id: uuid.UUID, token: str) -> None:
        self.user_id = user_id
        self.token = token
        self.durable: list[int] = []
        self.names: list[str] = []  # the event of each id in `durable`
        self.disconnects = 0
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("*", self._on_event)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_event(self, event: str, data: Any) -> None:
        if event != "generation.progress" and isinstance(data, dict) and isinstance(data.get("event_id"), int):
            self.durable.append(data["event_id"])
            self.names.append(event)

    def _on_disconnect(self, *args: Any) -> None:
        self.disconnects += 1

    async def connect(self, url: str) -> None:
        await self.sio.connect(url, auth={"token": self.token, "last_event_id": 0}, transports=["websocket"],
                               wait_timeout=10)




async def _healthy(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            body = await resp.json()
            return resp.status == 200 and body["checks"].get("worker") == "ok"
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _until(check, timeout: float) -> float:
    """Seconds until `check()` is true (raises past `timeout`)."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not recovered within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def run(base: Settings, *, generations: int = 30, rate: float = 5.0, users: int = 6,
              settle_timeout: float = 90.0, log=print) -> Report:
    report = Report()
    pg, redis = OwnPostgres(), OwnRedis()
    procs: list[Any] = []
    try:
        await asyncio.to_thread(_create_database, pg)
        settings = base.model_copy(update={
            "database_url": pg.url("lustify"), "redis_url": redis.url, "redis_namespace": "chaos",
            "local_ai_delay_ms": 300, "generation_lease_seconds": 3, "sweep_interval_seconds": 1,
            "queued_grace_seconds": 2, "worker_shutdown_grace_seconds": 1, "rate_limit_enabled": False,
            "generation_db_patience_seconds": 20, "data_dir": Path(base.data_dir),
        })
        await asyncio.to_thread(_migrate, settings)
        dsn = pg.url("lustify")
        people = await insert_funded_users(dsn, users, credits=5 * generations, label="chaos", plan=None)
        servers = [ServerProcess(settings), ServerProcess(settings)]
        for server in servers:
            await server.__aenter__()
            procs.append(server)
        workers = [WorkerProcess(settings).start(), WorkerProcess(settings).start()]
        procs.extend(workers)
        secret = settings.jwt_secret.get_secret_value()
        clients = [Client(u, issue_access_token(user_id=u, token_version=0, secret=secret, ttl=3600)) for u in people]
        for i, client in enumerate(clients):
            await client.connect(servers[i % 2].url)
        async with aiohttp.ClientSession() as http:
            await _until(lambda: _healthy(http, servers[0].url), 30)
            accepted: list[str] = []
            faults: list[float] = []

            async def submit(i: int) -> None:
                client = clients[i % len(clients)]
                key = f"chaos-{i}-{uuid.uuid4().hex[:6]}"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    url = servers[(i + int(time.monotonic())) % 2].url
                    try:
                        async with http.post(url + "/api/content/generate/image", json={"prompt": f"chaos {i}"},
                                             headers={"Authorization": f"Bearer {client.token}",
                                                      "Idempotency-Key": key}) as resp:
                            report.statuses[resp.status] = report.statuses.get(resp.status, 0) + 1
                            if resp.status == 202:
                                accepted.append((await resp.json())["id"])
                                return
                            if resp.status not in (409, 503):
                                log(f"generation {i}: {resp.status} {await resp.text()}")
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2 + random.random() * 0.3)

            async def fault_plan() -> None:
                span = generations / rate
                await asyncio.sleep(span * 0.15)
                redis.kill()
                log("redis SIGKILLed")
                await asyncio.sleep(3)
                redis.start()
                faults.append(time.monotonic())
                report.recovery["redis: servers and worker healthy"] = await _until(
                    lambda: _all_healthy(http, servers), 60)
                log("redis back")
                await asyncio.sleep(max(0.5, span * 0.1))
                await asyncio.to_thread(pg.restart, "fast")
                faults.append(time.monotonic())
                report.recovery["postgresql restart: healthy"] = await _until(lambda: _all_healthy(http, servers), 60)
                log("postgresql restarted")
                await asyncio.sleep(max(0.5, span * 0.1))
                workers[0].signal(9)
                await workers[0].wait(10)
                replacement = WorkerProcess(settings).start()
                procs.append(replacement)
                faults.append(time.monotonic())
                log("worker 1 SIGKILLed, another started")
                await asyncio.sleep(max(0.5, span * 0.1))
                workers[1].signal(15)
                await workers[1].wait(30)
                procs.append(WorkerProcess(settings).start())
                faults.append(time.monotonic())
                log("worker 2 SIGTERMed, another started")

            planner = asyncio.create_task(fault_plan())
            tasks = []
            for i in range(generations):
                tasks.append(asyncio.create_task(submit(i)))
                report.submitted += 1
                await asyncio.sleep(1 / rate)
            await asyncio.gather(*tasks)
            await planner
            report.accepted = len(accepted)
            last_fault = faults[-1]
            conn = await asyncpg.connect(dsn)
            try:
                async def settled() -> bool:
                    rows = await conn.fetch("SELECT status FROM generated_content WHERE id = ANY($1::uuid[])",
                                            accepted)
                    return all(r["status"] in TERMINAL for r in rows) and len(rows) == len(accepted)

                try:
                    await _until(settled, settle_timeout)
                except AssertionError:
                    rows = await conn.fetch("SELECT id::text, status, stage, attempts FROM generated_content "
                                            "WHERE id = ANY($1::uuid[]) AND status NOT IN ('completed','failed','canceled')",
                                            accepted)
                    report.unsettled = [f"{r['id']}:{r['status']}/{r['stage']}/{r['attempts']}" for r in rows]
                report.settled_after_last_fault = time.monotonic() - last_fault
                await _check_money(conn, accepted, report)
                await asyncio.sleep(settings.realtime_catch_up_seconds * 2 + 0.5)  # the last events' catch-up
                await _check_events(conn, clients, report)
            finally:
                await conn.close()
        for client in clients:
            report.reconnects += client.disconnects
            await client.sio.disconnect()
        for server in servers:
            report.server_errors.extend(server.errors())
        return report
    finally:
        for proc in reversed(procs):
            try:
                await proc.__aexit__(None, None, None)
            except Exception:
                pass
        redis.close()
        pg.close()


async def _all_healthy(http: aiohttp.ClientSession, servers: list[ServerProcess]) -> bool:
    return all([await _healthy(http, server.url) for server in servers])


def _create_database(pg: OwnPostgres) -> None:
    from tests.conftest import admin_sql

    admin_sql(pg.admin_url, 'CREATE DATABASE "lustify"')


def _migrate(settings: Settings) -> None:
    from db.migrate import upgrade
    from server.cli import _seed

    upgrade(settings.sqlalchemy_url)
    asyncio.run(_seed(settings))


async def _check_money(conn: asyncpg.Connection, accepted: list[str], report: Report) -> None:
    rows = await conn.fetch("""
        SELECT c.id::text, c.status,
               (SELECT count(*) FROM credit_transactions t WHERE t.reference_id = c.id::text AND t.type = 'spend') AS charges,
               (SELECT count(*) FROM credit_transactions t WHERE t.reference_id = c.id::text AND t.type = 'refund') AS refunds
        FROM generated_content c WHERE c.id = ANY($1::uuid[])""", accepted)
    for row in rows:
        report.outcomes[row["status"]] = report.outcomes.get(row["status"], 0) + 1
        if row["charges"] != 1:
            report.charged_twice.append(row["id"])
        if row["refunds"] != (0 if row["status"] == "completed" else 1):
            report.refund_mismatch.append(f"{row['id']}:{row['status']}:{row['refunds']}")
    report.ledger_drift = await conn.fetchval("""
        SELECT count(*) FROM user_credits c
        WHERE c.balance <> COALESCE((SELECT sum(amount) FROM credit_transactions t WHERE t.user_id = c.user_id), 0)""")


async def _check_events(conn: asyncpg.Connection, clients: list[Client], report: Report) -> None:
    for client in clients:
        latest = await conn.fetchval("SELECT event_seq FROM user_credits WHERE user_id = $1", client.user_id)
        got = client.durable
        missing = sorted(set(range(1, latest + 1)) - set(got))
        if missing:
            report.missing_events[str(client.user_id)] = missing
        report.duplicate_events += len(got) - len(set(got))
        report.out_of_order += sum(1 for a, b in zip(got, got[1:], strict=False) if b <= a)
        back = next((i for i in range(1, len(got)) if got[i] <= got[i - 1]), None)
        if back is not None:
            report.event_trails[str(client.user_id)] = list(zip(got, client.names, strict=False))[max(0, back - 8):back + 6]
