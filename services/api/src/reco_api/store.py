"""The API's only backend: Redis, read-only, one single-key read per request.

:class:`ServedStore` owns the client: the ``GET`` of a user's list behind each request and the
rare ``GET`` of a model's active record (timed, errors counted), the readiness ping and the
close. Each read touches one key, so one slot of a Redis Cluster. A failed read raises
:class:`StoreUnavailable` at once (one immediate retry on a connection found closed, none after
a timeout, no backoff): the API answers 503 quickly instead of hanging, and the client
reconnects by itself when Redis is back.

The client is :class:`reco_common.pipelined.PipelinedRedis` (one server) or
:class:`reco_common.pipelined_cluster.ClusterPipelinedRedis` (a Redis Cluster, by the URL): one
connection per server whose commands of one event-loop turn leave in one write (a burst of
requests needs no pool and never waits for a connection); redis-py's per-command CPU was the
largest cost of a request.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any, Protocol

from reco_api.metrics import ApiMetrics
from reco_common.contracts import RedisKeys
from reco_common.pipelined import PipelinedRedis, RedisReplyError, pack
from reco_common.pipelined_cluster import ClusterPipelinedRedis
from reco_common.settings import RedisSettings

logger = logging.getLogger(__name__)

_PING = pack("PING")


class StoreUnavailable(Exception):
    """Redis did not answer; the request cannot be served from it."""


class Store(Protocol):
    """What the HTTP layer needs from the backend: raw values, decoded by the caller."""

    async def read_list(self, model_name: str, user_id: str) -> bytes | None: ...

    async def read_active(self, model_name: str) -> bytes | None: ...

    async def ping(self) -> bool: ...


class _Client(Protocol):
    async def execute(self, command: bytes, *, key: bytes | str | None = None) -> Any: ...

    async def aclose(self) -> None: ...


class ServedStore:
    def __init__(self, *, redis: _Client, keys: RedisKeys, metrics: ApiMetrics) -> None:
        self._redis = redis
        self._keys = keys
        self._metrics = metrics
        self._available = True

    @classmethod
    def open(cls, settings: RedisSettings, *, timeout_s: float, metrics: ApiMetrics) -> ServedStore:
        """A client that fails fast: ``timeout_s`` per attempt, one retry, no backoff."""
        redis: _Client
        if settings.cluster:
            redis = ClusterPipelinedRedis(settings.node_urls(), timeout_s=timeout_s)
        else:
            redis = PipelinedRedis(settings.url, timeout_s=timeout_s)
        return cls(redis=redis, keys=settings.keys, metrics=metrics)

    async def read_list(self, model_name: str, user_id: str) -> bytes | None:
        """The user's list (the read behind every request)."""
        return await self._get(self._keys.recommendations(model_name, user_id))

    async def read_active(self, model_name: str) -> bytes | None:
        """The model's active record (read rarely: the caller keeps it in process)."""
        return await self._get(self._keys.active_model(model_name))

    async def _get(self, key: str) -> bytes | None:
        started = perf_counter()
        try:
            value: bytes | None = await self._redis.execute(pack("GET", key), key=key)
        except (OSError, RedisReplyError) as exc:  # ConnectionError, TimeoutError among them
            self._metrics.redis_errors.labels(type(exc).__name__).inc()
            self._went_down(exc)
            raise StoreUnavailable(str(exc)) from exc
        finally:
            self._metrics.redis_latency.observe(perf_counter() - started)
        if not self._available:
            self._came_back()
        return value

    async def ping(self) -> bool:
        try:
            await self._redis.execute(_PING)
        except (OSError, RedisReplyError) as exc:
            self._metrics.redis_errors.labels(type(exc).__name__).inc()
            self._went_down(exc)
            return False
        if not self._available:
            self._came_back()
        return True

    async def close(self) -> None:
        await self._redis.aclose()

    def _went_down(self, exc: BaseException) -> None:
        # One line per outage, not one per request: the counter has the per-request detail.
        if self._available:
            self._available = False
            logger.warning("Redis unavailable, answering 503 until it is back: %r", exc)

    def _came_back(self) -> None:
        self._available = True
        logger.info("Redis reachable again")
