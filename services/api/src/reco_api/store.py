"""The API's only backend: Redis, read-only, one round trip per request.

:class:`ServedStore` owns the client: the ``MGET`` behind each request (timed, errors counted),
the readiness ping and the close. A failed read raises :class:`StoreUnavailable` at once (one
immediate retry for a connection that went stale, no backoff): the API answers 503 quickly
instead of hanging, and the pool reconnects by itself when Redis is back.

A burst of requests beyond the pool's ``max_connections`` queues for a connection, up to the
timeout, instead of failing: redis-py's plain pool raises ``MaxConnectionsError`` at once
(an open-loop load test turned a burst into thousands of 503s), and its blocking pool costs
~19 µs of CPU on every command (a condition and a timeout per checkout, measured). A semaphore
in front of the plain pool costs nothing until every connection is busy.
"""

from __future__ import annotations

import asyncio
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
    def __init__(
        self,
        *,
        redis: Redis,
        keys: RedisKeys,
        metrics: ApiMetrics,
        max_connections: int,
        timeout_s: float,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._metrics = metrics
        self._available = True
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._timeout_s = timeout_s

    @classmethod
    def open(cls, settings: RedisSettings, *, timeout_s: float, metrics: ApiMetrics) -> ServedStore:
        """A pooled client that fails fast: ``timeout_s`` per attempt, one retry, no backoff."""
        redis = connect(settings, timeout_s=timeout_s)
        redis.set_retry(Retry(NoBackoff(), retries=1))
        return cls(
            redis=redis,
            keys=settings.keys,
            metrics=metrics,
            max_connections=settings.max_connections,
            timeout_s=timeout_s,
        )

    async def read(self, model_name: str, user_id: str) -> ServedView:
        """The user's list and the model's active record, in one ``MGET``."""
        started = perf_counter()
        await self._take_connection()
        try:
            view = await read_served(self._redis, self._keys, model_name, user_id)
        except (RedisError, OSError) as exc:
            self._metrics.redis_errors.labels(type(exc).__name__).inc()
            self._went_down(exc)
            raise StoreUnavailable(str(exc)) from exc
        finally:
            self._slots.release()
            self._metrics.redis_latency.observe(perf_counter() - started)
        if not self._available:
            self._came_back()
        return view

    async def ping(self) -> bool:
        try:
            await self._take_connection()
        except StoreUnavailable:
            return False
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._metrics.redis_errors.labels(type(exc).__name__).inc()
            self._went_down(exc)
            return False
        finally:
            self._slots.release()
        if not self._available:
            self._came_back()
        return True

    async def _take_connection(self) -> None:
        """One of the pool's connections for this command, waiting at most the timeout."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns without waiting
            return
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            self._metrics.redis_errors.labels("PoolExhausted").inc()
            raise StoreUnavailable(
                f"all {self._max_connections} Redis connections stayed "
                f"busy for {self._timeout_s:g} s"
            ) from None

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
