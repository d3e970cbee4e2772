"""Prometheus metrics, one registry per app so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds", "HTTP request duration", ["method", "route"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.socket_connections = Gauge(
            "socketio_connections", "Connected Socket.IO clients", registry=self.registry
        )
        self.stripe_webhook_events = Counter(
            "stripe_webhook_events_total", "Stripe webhook events by outcome", ["outcome"],
            registry=self.registry,
        )
        self.stripe_api_version_mismatch = Counter(
            "stripe_webhook_api_version_mismatch_total",
            "Stripe events whose api_version is not the pinned one", ["api_version"],
            registry=self.registry,
        )
        self.events_published = Counter(
            "realtime_events_published_total", "Events published to users", ["event"],
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


async def generation_job_metrics(redis, key: str) -> bytes:
    """Generation job counters that workers keep in Redis, in Prometheus text form."""
    raw = await redis.hgetall(key)
    totals: dict[tuple[str, str], float] = {}
    seconds: dict[str, float] = {}
    for field, value in raw.items():
        kind, _, what = field.decode().partition("|")
        if what == "seconds":
            seconds[kind] = float(value)
        else:
            totals[(kind, what)] = float(value)
    lines = ["# HELP generation_jobs_total Generation job runs by kind and outcome",
             "# TYPE generation_jobs_total counter"]
    lines += [f'generation_jobs_total{{kind="{k}",outcome="{o}"}} {v:g}' for (k, o), v in sorted(totals.items())]
    lines += ["# HELP generation_job_seconds_total Time spent in generation job runs",
              "# TYPE generation_job_seconds_total counter"]
    lines += [f'generation_job_seconds_total{{kind="{k}"}} {v:.3f}' for k, v in sorted(seconds.items())]
    return ("\n".join(lines) + "\n").encode()
