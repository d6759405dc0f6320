"""The API's only backend: Redis, read-only, one round trip per request.

:class:`ServedStore` owns the client: the ``MGET`` behind each request (timed, errors counted),
the readiness ping and the close. A failed read raises :class:`StoreUnavailable` at once (one
immediate retry for a connection that went stale, no backoff): the API answers 503 quickly
instead of hanging, and the pool reconnects by itself when Redis is back.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from reco_api.metrics import ApiMetrics
from reco_common.contracts import RedisKeys
from reco_common.redis_store import ServedView, connect, read_served
from reco_common.settings import RedisSettings

logger = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """Redis did not answer; the request cannot be served from it."""


class Store(Protocol):
    """What the HTTP layer needs from the backend."""

    async def read(self, model_name: str, user_id: str) -> ServedView: ...

    async def ping(self) -> bool: ...


class ServedStore:
    def __init__(self, *, redis: Redis, keys: RedisKeys, metrics: ApiMetrics) -> None:
        self._redis = redis
        self._keys = keys
        self._metrics = metrics
        self._available = True

    @classmethod
    def open(cls, settings: RedisSettings, *, timeout_s: float, metrics: ApiMetrics) -> ServedStore:
        """A pooled client that fails fast: ``timeout_s`` per attempt, one retry, no backoff."""
        redis = connect(settings, timeout_s=timeout_s)
        redis.set_retry(Retry(NoBackoff(), retries=1))
        return cls(redis=redis, keys=settings.keys, metrics=metrics)

    async def read(self, model_name: str, user_id: str) -> ServedView:
        """The user's list and the model's active record, in one ``MGET``."""
        started = perf_counter()
        try:
            view = await read_served(self._redis, self._keys, model_name, user_id)
        except (RedisError, OSError) as exc:
            self._metrics.redis_errors.labels(type(exc).__name__).inc()
            self._went_down(exc)
            raise StoreUnavailable(str(exc)) from exc
        finally:
            self._metrics.redis_latency.observe(perf_counter() - started)
        if not self._available:
            self._came_back()
        return view

    async def ping(self) -> bool:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
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
