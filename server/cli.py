"""`lustify` command: dev, serve, worker, migrate, seed, ledger check, stripe-webhook."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

from server import logs
from server.config import Settings

log = logging.getLogger("lustify")


def _settings(**overrides: object) -> Settings:
    return Settings(**overrides)


def cmd_migrate(settings: Settings) -> int:
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a line per plugin and step otherwise
    from db.migrate import upgrade

    upgrade(settings.sqlalchemy_url)
    print("database migrated to head")
    return 0


async def _seed(settings: Settings) -> int:
    from db.session import make_engine, make_sessionmaker, transaction
    from server.billing.plans import seed_plans

    engine = make_engine(settings.sqlalchemy_url, pool_size=1)
    try:
        async with transaction(make_sessionmaker(engine)) as session:
            return await seed_plans(session, settings=settings)
    finally:
        await engine.dispose()


async def _seed_demo(settings: Settings) -> str:
    from server.demo import seed_demo
    from server.resources import open_resources

    async with open_resources(settings) as res:
        return await seed_demo(res)


def cmd_seed(settings: Settings, *, demo: bool = False) -> int:
    count = asyncio.run(_seed(settings))
    print(f"seeded {count} plans")
    if demo:
        from server.demo import DEMO_PASSWORD

        email = asyncio.run(_seed_demo(settings))
        print(f"demo account: {email} / {DEMO_PASSWORD}")
    return 0


def cmd_serve(settings: Settings) -> int:
    from server.serving import serve

    asyncio.run(serve(settings))
    return 0


def cmd_worker(settings: Settings) -> int:
    from jobs.worker import make_worker

    # arq logs two lines per job and per cron run; jobs/worker.py logs one line per job that
    # did something, under the request id that asked for it.
    logging.getLogger("arq").setLevel(logging.WARNING)
    worker = make_worker(settings)
    log.info("worker %s started: %d job kinds, queue %s", worker.id, len(worker.functions), worker.queue_name)
    worker.run()
    return 0


async def _worker_alive_here(settings: Settings) -> bool:
    import socket
    import time

    from server.queueing import WORKER_STALE_SECONDS, worker_heartbeat_key
    from server.resources import make_redis

    redis = make_redis(settings)
    try:
        fresh = await redis.zrangebyscore(worker_heartbeat_key(settings), time.time() - WORKER_STALE_SECONDS, "+inf")
    finally:
        await redis.aclose()
    host = socket.gethostname() + ":"
    return any(member.decode().startswith(host) for member in fresh)


def cmd_health_worker(settings: Settings) -> int:
    """Exit 0 if a worker on this host beat recently (the worker container's healthcheck)."""
    try:
        alive = asyncio.run(_worker_alive_here(settings))
    except Exception as exc:
        print(f"worker health unknown: {exc}", file=sys.stderr)
        return 1
    print("worker ok" if alive else "no worker heartbeat from this host")
    return 0 if alive else 1


def cmd_ledger_check(settings: Settings) -> int:
    from server.credits.audit import run_ledger_check

    return asyncio.run(run_ledger_check(settings))


async def _create_stripe_webhook(settings: Settings, url: str) -> tuple[str, str]:
    from server.adapters.billing.stripe import StripeBilling
    from server.billing.webhooks import HANDLERS

    billing = StripeBilling(settings)
    try:
        return await billing.create_webhook_endpoint(url=url, events=sorted(HANDLERS))
    finally:
        await billing.close()


def cmd_stripe_webhook(settings: Settings, url: str) -> int:
    """Create the Stripe webhook endpoint, its events in our pinned API version."""
    from server.adapters.billing.stripe_objects import API_VERSION

    if settings.stripe_secret_key is None or not settings.stripe_secret_key.get_secret_value():
        print("lustify: set STRIPE_SECRET_KEY first", file=sys.stderr)
        return 2
    endpoint_id, secret = asyncio.run(_create_stripe_webhook(settings, url))
    print(f"Stripe webhook endpoint {endpoint_id} for {url} (API version {API_VERSION})")
    print(f"STRIPE_WEBHOOK_SECRET={secret}")
    return 0


def _persistent_secret(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


class WorkerSupervisor:
    """Runs `lustify worker` as a child and starts it again if it dies (as compose would)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.stopping = threading.Event()
        self.proc = self._spawn()
        self.thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self.thread.start()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "server.cli", "worker"], env=self.env)

    def _watch(self) -> None:
        while not self.stopping.wait(0.5):
            code = self.proc.poll()
            if code is not None and not self.stopping.is_set():
                log.warning("the worker exited with %s; starting it again", code)
                self.proc = self._spawn()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def cmd_dev(args: argparse.Namespace) -> int:
    """Everything on one machine: embedded PostgreSQL and Redis unless URLs are given."""
    # pgserver asks platformdirs for a runtime dir that a plain shell may not set.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from server.embedded import EmbeddedPostgres, EmbeddedRedis

    data_dir = Path(args.data_dir or os.environ.get("DATA_DIR", "./var")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ
    env["DATA_DIR"] = str(data_dir)
    env.setdefault("APP_ENV", "development")
    env.setdefault("LOG_JSON", "false")
    if args.port:
        env["PORT"] = str(args.port)
    # A dev instance grants credits at once (local billing) and shows /metrics: this machine only,
    # unless HOST says otherwise.
    env.setdefault("HOST", "127.0.0.1")
    if not env.get("JWT_SECRET"):
        env["JWT_SECRET"] = _persistent_secret(data_dir / "jwt_secret")
    postgres = redis = None
    worker: WorkerSupervisor | None = None
    try:
        if not env.get("DATABASE_URL") and not env.get("DB_HOST"):
            postgres = EmbeddedPostgres(data_dir / "postgres")
            env["DATABASE_URL"] = postgres.ensure_database("lustify")
        if not env.get("REDIS_URL"):
            redis = EmbeddedRedis(data_dir / "redis")
            env["REDIS_URL"] = redis.url
        settings = _settings()
        logs.configure(settings.log_level, json=settings.log_json)
        cmd_migrate(settings)
        cmd_seed(settings)
        worker = WorkerSupervisor(env)
        print(
            f"\nLustify dev is up: http://{settings.host}:{settings.port}  (the studio; API docs: /docs, health: /health)\n"
            f"  database: {'embedded ' + str(data_dir / 'postgres') if postgres else 'DATABASE_URL'}\n"
            f"  redis:    {'embedded ' + env['REDIS_URL'] if redis else 'REDIS_URL'}\n"
            f"  emails:   printed here and written to {data_dir / 'outbox'}\n"
            "  Ctrl-C stops everything; data stays in the data dir.\n",
            flush=True,
        )
        return cmd_serve(settings)
    finally:
        if worker is not None:
            worker.stop()
        if redis is not None:
            redis.stop()
        if postgres is not None:
            postgres.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lustify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="start everything (embedded PostgreSQL/Redis by default)")
    dev.add_argument("--port", type=int)
    dev.add_argument("--data-dir")
    serve = sub.add_parser("serve", help="run the HTTP + Socket.IO server")
    serve.add_argument("--port", type=int)
    sub.add_parser("worker", help="run an arq worker")
    sub.add_parser("migrate", help="alembic upgrade head")
    seed = sub.add_parser("seed", help="insert or update the subscription plans")
    seed.add_argument("--demo", action="store_true", help="also create a verified demo account with credits")
    health = sub.add_parser("health", help="process health checks (for container healthchecks)")
    health.add_argument("what", choices=["worker"])
    ledger = sub.add_parser("ledger", help="ledger tools")
    ledger.add_argument("action", choices=["check"])
    webhook = sub.add_parser("stripe-webhook", help="create the Stripe webhook endpoint (pins its API version)")
    webhook.add_argument("url", help="public URL of /api/subscriptions/webhook")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "dev":
        return cmd_dev(args)
    overrides = {"port": args.port} if getattr(args, "port", None) else {}
    try:
        settings = _settings(**overrides)
    except ValueError as exc:
        print(f"lustify: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, json=settings.log_json)
    if args.command == "seed":
        return cmd_seed(settings, demo=args.demo)
    if args.command == "stripe-webhook":
        return cmd_stripe_webhook(settings, args.url)
    commands = {"serve": cmd_serve, "worker": cmd_worker, "migrate": cmd_migrate, "ledger": cmd_ledger_check,
                "health": cmd_health_worker}
    return commands[args.command](settings)


if __name__ == "__main__":
    sys.exit(main())
