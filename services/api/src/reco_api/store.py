"""The API's only backend: Redis, read-only, one round trip per request.

:class:`ServedStore` owns the client: the ``MGET`` behind each request (timed, errors counted),
the readiness ping and the close. A failed read raises :class:`StoreUnavailable` at once (one
immediate retry on a connection found closed, none after a timeout, no backoff): the API answers
503 quickly instead of hanging, and the client reconnects by itself when Redis is back.

The client is :class:`reco_api.pipelined.PipelinedRedis`: one connection whose commands of one
event-loop turn leave in one write (a burst of requests needs no pool and never waits for a
connection); redis-py's per-command CPU was the largest cost of a request.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Protocol

from reco_api.metrics import ApiMetrics
from reco_api.pipelined import PipelinedRedis, RedisReplyError, pack
from reco_common.contracts import RedisKeys
from reco_common.redis_store import ServedView, served_keys
from reco_common.settings import RedisSettings

logger = logging.getLogger(__name__)

_PING = pack("PING")


class StoreUnavailable(Exception):
    """Redis did not answer; the request cannot be served from it."""


class Store(Protocol):
    """What the HTTP layer needs from the backend."""

    async def read(self, model_name: str, user_id: str) -> ServedView: ...

    async def ping(self) -> bool: ...


class ServedStore:
    def __init__(self, *, redis: PipelinedRedis, keys: RedisKeys, metrics: ApiMetrics) -> None:
        self._redis = redis
        self._keys = keys
        self._metrics = metrics
        self._available = True

    @classmethod
    def open(cls, settings: RedisSettings, *, timeout_s: float, metrics: ApiMetrics) -> ServedStore:
        """A client that fails fast: ``timeout_s`` per attempt, one retry, no backoff."""
        redis = PipelinedRedis(settings.url, timeout_s=timeout_s)
        return cls(redis=redis, keys=settings.keys, metrics=metrics)

    async def read(self, model_name: str, user_id: str) -> ServedView:
        """The user's list and the model's active record, in one ``MGET``."""
        started = perf_counter()
        command = pack("MGET", *served_keys(self._keys, model_name, user_id))
        try:
            rec, active = await self._redis.execute(command)
        except (OSError, RedisReplyError) as exc:  # ConnectionError, TimeoutError among them
            self._metrics.redis_errors.labels(type(exc).__name__).inc()
            self._went_down(exc)
            raise StoreUnavailable(str(exc)) from exc
        finally:
            self._metrics.redis_latency.observe(perf_counter() - started)
        if not self._available:
            self._came_back()
        return ServedView(rec, active)

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
