"""Assembles the two FastAPI applications: the public API and the internal (ops) one.

- :func:`create_app`, the public port (``RECO_API_PORT``, behind the load balancer): the
  recommendations route, ``/healthz`` and ``/readyz`` (a load balancer health-checks the port
  it sends traffic to), and nothing else: no ``/metrics``, no ``/docs``, no ``/openapi.json``;
- :func:`create_internal_app`, the internal port (``RECO_API_OPS_PORT``, reachable by
  Prometheus and the cluster, never published): ``/metrics``, ``/docs`` and ``/openapi.json``
  (the public API's schema) and the same probes.

``/healthz``, ``/readyz``, ``/metrics`` and the JSON error shape are :mod:`reco_common.ops`';
the API registers its readiness checks (Redis answers, not draining). The only middleware is
the HTTP metrics' (pure ASGI). The apps hold no globals: the store, the draining flag and the
metrics registry are passed in, so tests and benchmarks build as many apps as they need.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry

from reco_api.docs import serve_docs
from reco_api.errors import install_rate_limit_handler
from reco_api.hot_path import HotPath
from reco_api.metrics import ApiMetrics, HttpMetrics, MeasureRequests
from reco_api.recommendations import (
    PATH,
    RecommendationService,
    documented_route,
    recommendations_route,
)
from reco_api.settings import ApiSettings
from reco_api.store import Store
from reco_common.http_errors import install_error_handlers
from reco_common.ops import Readiness, install_ops, ops_router

DESCRIPTION = """Serves each user's precomputed recommendations from Redis.

Every error answers with one JSON shape: `{"error": {"status", "code", "message", "details"}}`.
"""


def create_app(
    *,
    settings: ApiSettings,
    store: Store,
    draining: asyncio.Event,
    metrics: ApiMetrics,
    registry: CollectorRegistry,
) -> HotPath:
    """The FastAPI app, with the served route answered in front of its stack (``HotPath``)."""
    app = FastAPI(
        title="reco API",
        version=version("reco-api"),
        description=DESCRIPTION,
        # The docs and the schema are served on the internal port (create_internal_app).
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Prometheus is the metrics path; FastAPI's OpenTelemetry hooks would only cost time.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    service = RecommendationService(store=store, settings=settings, metrics=metrics)
    checks = readiness(store=store, draining=draining)
    # Reported, not gating: the API still answers every user from its copy of the record.
    checks.add("active_records", service.active_records_present, required=False)
    install_error_handlers(app)
    app.include_router(ops_router(checks))
    install_rate_limit_handler(app)
    served = recommendations_route(settings, service)
    # First in the routing table: every request is matched against the routes in order. Its GET
    # requests are answered by HotPath before the app's stack; the rest (HEAD, …) come here.
    app.router.routes.insert(0, served)
    document(app, documented_route(settings))
    http_metrics = HttpMetrics.create(registry) if settings.http_metrics else None
    if http_metrics is not None:
        app.add_middleware(MeasureRequests, metrics=http_metrics)
    app.state.readiness = checks
    return HotPath(app, route=served, path=PATH, endpoint=served.endpoint, metrics=http_metrics)


def create_internal_app(public: FastAPI, *, registry: CollectorRegistry) -> FastAPI:
    """The internal port's app: ``/metrics``, the public API's ``/openapi.json`` and ``/docs``
    (Swagger UI from the package, no CDN), and the probes of ``public``."""
    internal = FastAPI(
        title=public.title,
        version=public.version,
        description=public.description,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install_ops(internal, readiness=public.state.readiness, registry=registry)
    internal.openapi = public.openapi  # type: ignore[method-assign]
    serve_docs(internal)
    return internal


def readiness(*, store: Store, draining: asyncio.Event) -> Readiness:
    """Ready while Redis answers ``PING`` and SIGTERM has not come: the server sets ``draining``
    first thing, so that the load balancer stops sending traffic while the API keeps serving."""

    async def not_draining() -> bool:
        return not draining.is_set()

    checks = Readiness()
    checks.add("redis", store.ping)
    checks.add("not_draining", not_draining)
    return checks


def document(app: FastAPI, *routes: APIRoute) -> None:
    """Add ``routes`` to the app's OpenAPI schema without mounting them.

    For the routes served outside FastAPI's path operations for speed (see
    :mod:`reco_api.recommendations`): FastAPI still writes their schema, from the same models.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*routes, *app.routes],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
