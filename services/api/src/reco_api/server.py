"""The API process: the HTTP server (granian, or uvicorn) run programmatically, under our own
SIGTERM handling (:mod:`reco_api.http_server`).

Shutdown sequence (driven by :func:`reco_common.lifecycle.serve`, bounded by
``RECO_API_SHUTDOWN_TIMEOUT_S``):

1. SIGTERM: ``draining`` is set, so ``/readyz`` answers 503 at once;
2. the API keeps serving for ``RECO_API_DRAIN_S`` while the load balancer takes it out;
3. the server stops accepting, closes idle keep-alive connections and finishes the requests in
   flight (for what remains of the bound, less one second);
4. the Redis pool is closed and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

from prometheus_client import REGISTRY, CollectorRegistry
from uvicorn.loops.auto import auto_loop_factory

from reco_api.app import create_app, create_internal_app
from reco_api.http_server import RunningServer, http_server
from reco_api.metrics import ApiMetrics
from reco_api.settings import Settings
from reco_api.store import ServedStore
from reco_common.lifecycle import serve
from reco_common.ops import OpsServer

logger = logging.getLogger(__name__)


class ApiServer:
    """The role object: ``start`` builds the app, ``run`` serves, ``stop`` drains and closes."""

    def __init__(self, *, settings: Settings, registry: CollectorRegistry = REGISTRY) -> None:
        self._settings = settings
        self._registry = registry
        self._draining = asyncio.Event()
        self._exited = asyncio.Event()
        self._store: ServedStore | None = None
        self._server: RunningServer | None = None
        self._ops: OpsServer | None = None

    async def start(self) -> None:
        api = self._settings.api
        metrics = ApiMetrics.create(self._registry)
        self._store = ServedStore.open(
            self._settings.redis, timeout_s=api.redis_timeout_s, metrics=metrics
        )
        app = create_app(
            settings=api,
            store=self._store,
            draining=self._draining,
            metrics=metrics,
            registry=self._registry,
        )
        self._server = http_server(app, api)
        internal = create_internal_app(app.app, registry=self._registry)
        self._ops = OpsServer(internal, host=api.ops_host, port=api.ops_port)
        await self._ops.start()
        # Everything built so far lives as long as the process: move it out of the collector's
        # sight, so that the full collections the request garbage triggers do not walk ~70k
        # long-lived objects each time (the p99 at full load fell from ~60 ms to ~18 ms,
        # docs/benchmarks.md).
        gc.collect()
        gc.freeze()

    async def run(self) -> None:
        assert self._server is not None, "start() first"
        try:
            await self._server.serve()
        finally:
            self._exited.set()
        if not self._server.started:
            raise RuntimeError("the HTTP server did not start (see the log above)")

    async def stop(self) -> None:
        """Idempotent: fail readiness, serve through the drain period, then let the server finish."""
        if self._draining.is_set():
            await self._exited.wait()
            return
        self._draining.set()
        try:
            await self._drain()
            if self._server is not None:
                self._server.request_stop()
                await self._exited.wait()
        finally:
            if self._ops is not None:
                await asyncio.shield(self._ops.stop())
            if self._store is not None:
                await asyncio.shield(self._store.close())
        logger.info("stopped")

    async def _drain(self) -> None:
        drain_s = self._settings.api.drain_s
        logger.info("not ready any more; serving for %.1f s while traffic moves away", drain_s)
        with contextlib.suppress(TimeoutError):
            # Returns early when the server exited on its own: nothing is left to drain.
            await asyncio.wait_for(self._exited.wait(), timeout=drain_s)


def run(*, settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, then shut down within ``RECO_API_SHUTDOWN_TIMEOUT_S``."""
    role = ApiServer(settings=settings)
    with asyncio.Runner(loop_factory=auto_loop_factory(use_subprocess=False)) as runner:
        runner.run(serve(role, grace_s=settings.api.shutdown_timeout_s))
