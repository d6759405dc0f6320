"""Assembles the FastAPI application from its routers, error handlers and middleware.

The only middleware is the HTTP metrics' (pure ASGI). The app holds no globals: the store, the draining flag and the
metrics registry are passed in, so tests and benchmarks build as many apps as they need.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from reco_api.errors import install_error_handlers
from reco_api.health import Readiness, health_router
from reco_api.metrics import ApiMetrics, expose, measure_requests
from reco_api.recommendations import RecommendationService, recommendations_router
from reco_api.security import api_key_guard
from reco_api.settings import ApiSettings
from reco_api.store import Store

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
) -> FastAPI:
    app = FastAPI(
        title="reco API",
        version=version("reco-api"),
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        # Prometheus is the metrics path; FastAPI's OpenTelemetry hooks would only cost time.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.recommendations = RecommendationService(
        store=store, settings=settings, metrics=metrics
    )
    app.state.readiness = Readiness(store=store, draining=draining)
    install_error_handlers(app)
    guards = [api_key_guard(settings.api_keys)] if settings.api_keys else []
    app.include_router(recommendations_router(settings), dependencies=guards)
    app.include_router(health_router())
    expose(app, registry=registry)
    if settings.http_metrics:
        measure_requests(app, registry=registry)
    return app
