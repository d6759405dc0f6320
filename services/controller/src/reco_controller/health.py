"""``/healthz``, ``/readyz`` and ``/metrics`` on one small HTTP port, for the kubelet and Prometheus.

Liveness is the event loop answering at all; readiness is "connected to Kafka and the API",
which holds for a follower as well: a follower is ready to take over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

logger = logging.getLogger(__name__)


class HealthServer:
    def __init__(
        self, *, host: str, port: int, ready: Callable[[], bool], leading: Callable[[], bool]
    ) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._leading = leading
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()
        logger.info("health and metrics on %s", self._runner.addresses)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        body = {"ready": self._ready(), "leader": self._leading()}
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
