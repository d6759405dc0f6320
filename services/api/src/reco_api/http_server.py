"""The HTTP server under the app, run as a task of the process's own event loop.

Two servers, chosen by ``RECO_API_SERVER`` (docs/api.md, figures in docs/benchmarks.md):

- ``granian`` (default): granian's embedded server, Rust (hyper) parsing the requests and writing
  each response in one system call, the app called on this loop (``asginl``: no lifespan, which
  the API does not use). Granian does not read ``X-Forwarded-For`` itself, so uvicorn's
  ``ProxyHeadersMiddleware`` does it, with ``RECO_API_FORWARDED_ALLOW_IPS``, as uvicorn would;
- ``uvicorn``: httptools and uvloop, under :class:`reco_common.ops.Server` (no signal handlers).

Neither installs signal handlers: :mod:`reco_common.lifecycle` owns SIGTERM, and the API's
stop sequence (reco_api/server.py) calls :meth:`HttpServer.request_stop` after the drain. Both then
stop accepting, close idle keep-alive connections and finish the requests in flight for at most
``in_flight_timeout_s``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import uvicorn
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server as Granian
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from reco_api.settings import ApiSettings, HttpServer
from reco_common.ops import Server

logger = logging.getLogger(__name__)


class RunningServer(Protocol):
    @property
    def started(self) -> bool:
        """Whether the listener was bound (``serve`` returning without it: it failed)."""
        ...

    async def serve(self) -> None: ...

    def request_stop(self) -> None: ...


class _Uvicorn:
    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            http="httptools",
            lifespan="off",
            log_config=None,
            access_log=settings.access_log,
            server_header=False,
            backlog=settings.backlog,
            limit_concurrency=settings.limit_concurrency,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            timeout_graceful_shutdown=max(int(settings.in_flight_timeout_s), 1),
        )
        self._server = Server(config)

    @property
    def started(self) -> bool:
        return self._server.started

    async def serve(self) -> None:
        await self._server.serve()

    def request_stop(self) -> None:
        self._server.should_exit = True


# Granian's log records go to the root logger (reco_common.logging's handler), not to its own
# handlers on stdout; ``disable_existing_loggers`` stays false as in its default configuration.
_GRANIAN_LOGGING: dict[str, Any] = {
    "handlers": {},
    "loggers": {
        "_granian": {"propagate": True},
        "granian.access": {"propagate": True, "level": "INFO"},
    },
}


class _Granian:
    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        proxied = ProxyHeadersMiddleware(
            app,  # type: ignore[arg-type]  # Starlette's ASGIApp type is looser than uvicorn's
            trusted_hosts=settings.forwarded_allow_ips,
        )
        self._server = Granian(
            proxied,
            address=settings.host,
            port=settings.port,
            interface=Interfaces.ASGINL,
            http=HTTPModes.http1,
            websockets=False,
            runtime_threads=1,
            backlog=settings.backlog,
            # Requests handled at once; beyond it granian stops reading new ones (queues
            # them in the kernel) where uvicorn's limit_concurrency answers 503.
            backpressure=settings.limit_concurrency,
            http1_settings=HTTP1Settings(keep_alive=True),
            log_level=LogLevels(logging.getLevelName(logging.getLogger().level).lower()),
            log_dictconfig=_GRANIAN_LOGGING,
            log_access=settings.access_log,
        )
        self._server.workers_kill_timeout = max(int(settings.in_flight_timeout_s), 1)
        self._started = False
        self._server.on_startup(self._mark_started)

    def _mark_started(self) -> None:
        self._started = True  # the socket is bound: granian calls its start-up hooks after it

    @property
    def started(self) -> bool:
        return self._started

    async def serve(self) -> None:
        await self._server.serve()

    def request_stop(self) -> None:
        self._server.stop()  # type: ignore[no-untyped-call]


def http_server(app: ASGIApp, settings: ApiSettings) -> RunningServer:
    if settings.server is HttpServer.GRANIAN:
        return _Granian(app, settings)
    return _Uvicorn(app, settings)
