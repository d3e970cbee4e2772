"""Settings read from the environment (names follow the original spec's .env)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "secret", "your-jwt-secret", "dev-secret"}

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    app_env: Literal["development", "test", "production"] = Field(
        "development", validation_alias=AliasChoices("APP_ENV", "NODE_ENV")
    )
    host: str = "0.0.0.0"
    port: int = 3001
    public_url: str = ""  # base of links to this API (signed file URLs); defaults to localhost:PORT
    frontend_url: str = ""  # base of links in emails; empty: the studio this app serves (PUBLIC_URL)
    data_dir: Path = Path("./var")
    log_level: str = "INFO"
    log_json: bool = True
    access_log: bool = True  # a line per request (method, path, status, time), /health excepted

    database_url: str | None = None
    db_host: str | None = None
    db_port: int = 5432
    db_name: str = "lustify_ai"
    db_username: str = "lustify_user"
    db_password: SecretStr = SecretStr("")
    db_pool_size: int = 10

    redis_url: str | None = None
    redis_namespace: str = "lustify"  # prefix of every key, stream, queue and channel we own

    jwt_secret: SecretStr = SecretStr("change-me")
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_days: int = 30
    bcrypt_rounds: int = Field(12, ge=4, le=16)
    password_hash_threads: int = Field(0, ge=0, le=64)  # 0: the cores less one (server/auth/passwords.py)

    rate_limit_enabled: bool = True
    rate_limit_auth: str = "5/minute"
    rate_limit_api: str = "100/15minutes"
    rate_limit_generation: str = "10/minute"
    rate_limit_mail: str = "5/hour"  # emails we are asked to send to one address (sign-up, reset, resend)
    trusted_proxies: CommaList = Field(default_factory=list)  # proxies whose X-Forwarded-For we believe

    cors_origins: CommaList = Field(
        default_factory=lambda: ["http://localhost:3000", "http://localhost:5173"]
    )
    max_body_bytes: int = 1024 * 1024  # any request; each route caps its own body lower (routing.py)

    grok_api_key: SecretStr | None = None
    grok_base_url: str = "https://api.x.ai/v1"
    # xAI's replacement for the retired grok-4-fast-non-reasoning (docs/providers.md says where
    # this was checked and how to move on); checked against GET /v1/models at startup.
    grok_chat_model: str = "grok-4.20-0309-non-reasoning"
    grok_image_model: str = "grok-imagine-image"
    grok_video_model: str = "grok-imagine-video"
    grok_timeout_seconds: float = 120.0
    grok_max_connections: int = Field(1000, ge=1)  # a worker keeps hundreds of generations in flight
    local_ai_delay_ms: int = 300
    # The content classifier (second screening layer, with Grok): past this a request is refused (503).
    moderation_timeout_seconds: float = Field(8.0, gt=0, le=60)

    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_publishable_key: str | None = None  # pk_...: the studio's Payment Element
    stripe_api_base: str | None = None  # only to point the SDK at a Stripe-compatible server
    stripe_price_starter: str = "price_starter"
    stripe_price_pro: str = "price_pro"
    stripe_price_enterprise: str = "price_enterprise"
    stripe_webhook_tolerance_seconds: int = 300
    stripe_timeout_seconds: float = 30.0
    # A billing change still unfinished after this long (its process died) is finished by the sweep.
    billing_operation_stale_seconds: int = Field(300, ge=1)
    billing_lock_wait_seconds: float = 15.0  # a second billing change of one user waits this long
    stripe_parked_event_days: int = 3  # events that cannot apply yet are retried this long
    # One-off credit packs sold through payment intents: "id:credits:price_cents", comma-separated.
    credit_packs: CommaList = Field(
        default_factory=lambda: ["credits_100:100:999", "credits_500:500:3999",
                                 "credits_1200:1200:7999"]
    )

    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_s3_bucket: str | None = None
    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None
    signed_url_ttl_seconds: int = 3600

    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "Lustify <no-reply@lustify.local>"
    smtp_starttls: bool = True

    # /metrics: with METRICS_PORT, only on that listener; else with METRICS_TOKEN, only for that
    # bearer token; with neither, public outside production and not served in production.
    metrics_port: int = 0  # 0: no listener of its own
    metrics_host: str = "0.0.0.0"
    metrics_token: SecretStr = SecretStr("")

    socketio_compression: bool = False  # see DESIGN.md Performance: ~95 KB zlib state per socket
    socketio_max_message_bytes: int = 64 * 1024
    socketio_client_events_per_10s: int = 50
    realtime_catch_up_seconds: float = Field(1.0, gt=0)  # servers compare their feeds with the outbox
    socketio_ping_interval_seconds: float = 25.0
    socketio_ping_timeout_seconds: float = 20.0
    gc_tuning: bool = True  # freeze the startup heap, set gc_gen0_threshold (server/gc_tuning.py)
    gc_gen0_threshold: int = Field(700, ge=1)  # Python's own; chosen by bench/realtime_churn.py
    socketio_connect_timeout_seconds: float = 45.0  # to finish the handshake (auth) after connecting
    worker_poll_delay_seconds: float = 0.02
    # A worker's capacity, in jobs running at once: image runs (each waits seconds on the provider),
    # video runs (starts; polls give their slot back between polls), and everything due by time
    # (video polls, retries, emails, avatars, crons). Images never wait for a video slot.
    worker_image_jobs: int = Field(500, ge=1)
    worker_video_jobs: int = Field(50, ge=1)
    worker_other_jobs: int = Field(100, ge=1)
    shutdown_grace_seconds: float = Field(10.0, ge=0)  # SIGTERM: requests in flight get this long
    worker_shutdown_grace_seconds: int = Field(5, ge=0)  # on SIGTERM, then running jobs are handed back

    generation_max_attempts: int = Field(3, ge=1, le=10)
    generation_lease_seconds: int = Field(60, ge=1)  # a job renews it; past it the sweep takes over
    generation_retry_backoff_seconds: float = 2.0
    generation_db_patience_seconds: float = 20.0  # a job waits this long for PostgreSQL to come back
    image_job_timeout_seconds: int = 300
    video_job_timeout_seconds: int = 900  # from a video's start to its file: provider video times are minutes
    video_step_timeout_seconds: int = 300  # one run of a video job: its start, one poll, or its download
    video_poll_interval_seconds: float = 5.0
    sweep_interval_seconds: int = Field(10, ge=1, le=60)
    queued_grace_seconds: int = 30  # queued this long without an arq job -> re-enqueued
    idempotency_retention_hours: int = Field(24, ge=24)  # API.md: keys are kept at least 24 h

    @field_validator("cors_origins", "trusted_proxies", "credit_packs", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("credit_packs")
    @classmethod
    def _valid_packs(cls, value: list[str]) -> list[str]:
        seen = set()
        for item in value:
            parts = item.split(":")
            if (len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit()
                    or int(parts[1]) <= 0 or int(parts[2]) < 50 or parts[0] in seen):
                raise ValueError(f"credit pack {item!r} must be a unique 'id:credits:price_cents' "
                                 "with credits > 0 and a price of at least 50 cents")
            seen.add(parts[0])
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.app_env == "production":
            secret = self.jwt_secret.get_secret_value()
            if secret.strip().lower() in PLACEHOLDER_SECRETS or len(secret) < 32:
                raise ValueError(
                    "JWT_SECRET is missing or a placeholder; production needs a random secret "
                    "of at least 32 characters (e.g. `openssl rand -hex 32`)"
                )
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The asyncpg URL: DATABASE_URL when set, else built from DB_* variables."""
        url = self.database_url
        if url is None:
            password = quote(self.db_password.get_secret_value(), safe="")
            auth = quote(self.db_username, safe="") + (f":{password}" if password else "")
            url = f"postgresql://{auth}@{self.db_host or 'localhost'}:{self.db_port}/{self.db_name}"
        for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        raise ValueError("DATABASE_URL must be a postgresql:// URL")

    @property
    def redis_dsn(self) -> str:
        return self.redis_url or "redis://localhost:6379/0"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://localhost:{self.port}").rstrip("/")

    @property
    def studio_url(self) -> str:
        """Base of the pages emailed links open: FRONTEND_URL, else the studio served here."""
        return (self.frontend_url or self.base_url).rstrip("/")

    def key(self, *parts: object) -> str:
        """A Redis key (or channel/queue name) inside this deployment's namespace."""
        return ":".join([self.redis_namespace, *map(str, parts)])
