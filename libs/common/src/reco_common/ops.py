"""The ops surface every service shares: ``/healthz``, ``/readyz`` from registered checks, ``/metrics``.

- ``GET /healthz``: liveness, ``200 {"status": "ok"}`` while the event loop answers; it checks
  nothing else, so that an outage of a backend never gets the process restarted;
- ``GET /readyz``: ``200`` when every required check passes, else ``503``; the body lists each
  check's state either way: ``{"ready": false, "checks": {"model": true, "kafka": false}}``;
- ``GET /metrics``: the Prometheus registry, through prometheus_client's ASGI app.

A check is an :class:`asyncio.Event` (passing while set) or an async callable returning whether
it passes. The API and the worker add these routes to their own app (:func:`install_ops`); the
controller serves :func:`ops_app` alone. uvicorn runs under :class:`Server`, which leaves
SIGTERM and SIGINT to :mod:`reco_common.lifecycle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app
from pydantic import BaseModel
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from reco_common.http_errors import install_error_handlers

logger = logging.getLogger(__name__)

Check = asyncio.Event | Callable[[], Awaitable[bool]]


class Status(BaseModel):
    status: str


class ReadinessReport(BaseModel):
    """The ``/readyz`` body: whether the process is ready, and the state of each check."""

    ready: bool
    checks: dict[str, bool]


class Readiness:
    """The named checks a role registers; ``/readyz`` evaluates them all on each probe."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._informational: set[str] = set()

    def add(self, name: str, check: Check, *, required: bool = True) -> None:
        """Register ``check``; one not ``required`` is reported but does not gate readiness."""
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is already registered")
        self._checks[name] = check
        if not required:
            self._informational.add(name)

    async def report(self) -> ReadinessReport:
        states = await asyncio.gather(*(_passes(check) for check in self._checks.values()))
        checks = dict(zip(self._checks, states, strict=True))
        ready = all(state for name, state in checks.items() if name not in self._informational)
        return ReadinessReport(ready=ready, checks=checks)


async def _passes(check: Check) -> bool:
    if isinstance(check, asyncio.Event):
        return check.is_set()
    return await check()


def ops_router(readiness: Readiness) -> APIRouter:
    """``/healthz`` and ``/readyz`` (documented in the app's OpenAPI schema)."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Status:
        return Status(status="ok")

    @router.get(
        "/readyz",
        summary="Readiness: every required check passes",
        responses={503: {"model": ReadinessReport, "description": "Not ready"}},
    )
    async def readyz(response: Response) -> ReadinessReport:
        report = await readiness.report()
        if not report.ready:
            response.status_code = 503
        return report

    return router


class _AsgiEndpoint:
    """An ASGI app as a route's endpoint: Starlette would call a plain function as a handler
    of requests, and mounting the app instead would redirect ``/metrics`` to ``/metrics/``."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def metrics_route(registry: CollectorRegistry = REGISTRY) -> Route:
    """``GET /metrics`` from ``registry``, kept out of the OpenAPI schema."""
    return Route(
        "/metrics",
        _AsgiEndpoint(make_asgi_app(registry)),
        methods=["GET"],
        include_in_schema=False,
    )


def install_ops(
    app: FastAPI, *, readiness: Readiness, registry: CollectorRegistry = REGISTRY
) -> None:
    """Serve the ops endpoints on ``app`` and answer its errors in the one JSON shape."""
    install_error_handlers(app)
    app.include_router(ops_router(readiness))
    app.router.routes.append(metrics_route(registry))


def ops_app(*, title: str, readiness: Readiness, registry: CollectorRegistry = REGISTRY) -> FastAPI:
    """An app with the ops endpoints only (and its OpenAPI schema at ``/openapi.json``)."""
    app = FastAPI(title=title, docs_url=None, redoc_url=None)
    install_ops(app, readiness=readiness, registry=registry)
    return app


class Server(uvicorn.Server):
    """uvicorn without its own signal handlers: :func:`reco_common.lifecycle.serve` owns SIGTERM
    and SIGINT (uvicorn's would swallow them and re-raise them once it has stopped)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class OpsServer:
    """uvicorn serving ``app`` as a task of the role's event loop (the worker's and the
    controller's port); ``start`` returns once the port is bound, ``stop`` closes it."""

    def __init__(self, app: ASGIApp, *, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
        )
        self._server = Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        sockets: list[Any] = [s for srv in self._server.servers for s in srv.sockets]
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="ops-http")
        while not self._server.started:  # bounded: serve() either starts or ends the task
            if self._task.done():
                await self._task
                raise RuntimeError("the HTTP server stopped while starting (see the log above)")
            await asyncio.sleep(0.01)
        logger.info("HTTP on port %d", self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
