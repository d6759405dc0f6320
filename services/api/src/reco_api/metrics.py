"""The API's Prometheus metrics: HTTP requests, Redis, fallbacks (``/metrics``: reco_common.ops).

Every name follows ``reco_api_<name>_<unit>``. The per-request HTTP metrics (a counter and one
latency histogram, with prometheus-fastapi-instrumentator's names and labels) come from
:class:`MeasureRequests`, a pure ASGI middleware of our own: the instrumentator's middleware
builds a ``Request`` and a ``Response``, matches the route a second time and gathers async hooks
on every request, which cost 49 µs of CPU per request and 24 % of the API's maximum throughput (bench/api/overhead.py and run.py,
docs/benchmarks.md). Ours reads the route Starlette already matched (``scope["route"]``) and
caches the labelled children.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reco_common.metrics import MetricFactory

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
    active_record_missing: Counter

    @staticmethod
    def create(registry: CollectorRegistry) -> ApiMetrics:
        metric = MetricFactory(SERVICE, registry)
        return ApiMetrics(
            redis_latency=metric.histogram(
                "redis_latency",
                "Time of the one Redis read behind a recommendations request",
                buckets=REDIS_BUCKETS,
            ),
            redis_errors=metric.counter(
                "redis_errors",
                "Redis reads that failed (the request got 503 or the static list)",
                ["error_type"],
            ),
            fallbacks=metric.counter(
                "fallbacks",
                "Responses that were not the user's own list, by reason",
                ["reason"],
            ),
            corrupt_values=metric.counter(
                "corrupt_values",
                "Stored values that did not decode (the request fell back or failed)",
                ["kind"],
            ),
            active_record_missing=metric.counter(
                "active_record_missing",
                "Requests for a model whose active record is missing in Redis, answered with "
                "the last copy this process read",
            ),
        )


@dataclass(frozen=True, slots=True)
class HttpMetrics:
    """Requests by route template, method and status class, and their latency."""

    requests: Counter
    latency: Histogram
    # (handler, method, status class) -> the labelled children, looked up once each
    _children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = field(default_factory=dict)

    @staticmethod
    def create(registry: CollectorRegistry) -> HttpMetrics:
        metric = MetricFactory(SERVICE, registry)
        return HttpMetrics(
            requests=metric.counter(
                "http_requests",
                "HTTP requests by route template, method and status class",
                ["handler", "method", "status"],
            ),
            latency=metric.histogram(
                "http_request_duration",
                "Time from the request's arrival to the end of its response, by route template",
                ["handler", "method"],
                buckets=HTTP_BUCKETS,
            ),
        )

    def observe(self, handler: str, method: str, status: int, seconds: float) -> None:
        key = (handler, method, f"{status // 100}xx")
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.latency.labels(handler, method))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class MeasureRequests:
    """Pure ASGI middleware: each HTTP request's count and duration, by its route template.

    The handler label is the template of the route the router matched, which FastAPI's routes
    (and ours, :mod:`reco_api.recommendations`) record in the scope as ``route``. Requests
    that matched none (404s on made-up paths: they would grow the label set without bound), the
    probes, ``/metrics`` and the routes FastAPI adds itself (the docs) are not measured.
    """

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_and_note_status)
        finally:
            handler = getattr(scope.get("route"), "path", None)
            if handler is not None and handler not in UNMEASURED:
                self._metrics.observe(handler, scope["method"], status, perf_counter() - started)
