"""The API's Prometheus metrics: HTTP requests (prometheus-fastapi-instrumentator), Redis, fallbacks.

Every name follows ``reco_api_<name>_<unit>``. The HTTP metrics are limited to a request counter
and one latency histogram per handler: the instrumentator's default set observes four metrics per
request, and this API's budget per request is tens of microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics

from reco_common.metrics import metric_name

SERVICE = "api"

# Sub-millisecond resolution: a Redis read on the same network takes ~0.1-1 ms.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UNMEASURED = ("/metrics", "/healthz", "/readyz")


@dataclass(frozen=True, slots=True)
class ApiMetrics:
    """What the request path reports besides the HTTP metrics."""

    redis_latency: Histogram
    redis_errors: Counter
    fallbacks: Counter
    corrupt_values: Counter

    @staticmethod
    def create(registry: CollectorRegistry) -> ApiMetrics:
        return ApiMetrics(
            redis_latency=Histogram(
                metric_name(SERVICE, "redis_latency", "seconds"),
                "Time of the one Redis read behind a recommendations request",
                buckets=REDIS_BUCKETS,
                registry=registry,
            ),
            redis_errors=Counter(
                metric_name(SERVICE, "redis_errors"),
                "Redis reads that failed (the request got 503 or the static list)",
                ["error_type"],
                registry=registry,
            ),
            fallbacks=Counter(
                metric_name(SERVICE, "fallbacks"),
                "Responses that were not the user's own list, by reason",
                ["reason"],
                registry=registry,
            ),
            corrupt_values=Counter(
                metric_name(SERVICE, "corrupt_values"),
                "Stored values that did not decode (the request fell back or failed)",
                ["kind"],
                registry=registry,
            ),
        )


def _instrumentator(registry: CollectorRegistry) -> Instrumentator:
    return Instrumentator(
        should_group_status_codes=True,
        should_ignore_untemplated=True,
        excluded_handlers=list(UNMEASURED),
        registry=registry,
    )


def expose(app: FastAPI, *, registry: CollectorRegistry) -> None:
    """Serve ``/metrics`` from ``registry`` (kept out of the OpenAPI schema)."""
    _instrumentator(registry).expose(app, include_in_schema=False)


def measure_requests(app: FastAPI, *, registry: CollectorRegistry) -> None:
    """Count and time every request by handler and status class (a pure ASGI middleware)."""
    instrumentator = _instrumentator(registry)
    instrumentator.add(
        http_metrics.requests(metric_namespace="reco", metric_subsystem=SERVICE, registry=registry),
        http_metrics.latency(
            metric_namespace="reco",
            metric_subsystem=SERVICE,
            buckets=HTTP_BUCKETS,
            registry=registry,
        ),
    )
    instrumentator.instrument(app)
