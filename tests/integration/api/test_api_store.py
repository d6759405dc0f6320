"""The API's Redis boundary against a real Redis: a burst beyond the pool queues, never fails."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from api_procs import RedisServer
from prometheus_client import CollectorRegistry

from reco_api.metrics import ApiMetrics
from reco_api.store import ServedStore, StoreUnavailable
from reco_common.contracts import RecommendationList, RedisKeys
from reco_common.redis_store import ServedView, connect, replace_lists
from reco_common.settings import RedisSettings

MODEL = "default"


def _store(
    redis_server: RedisServer, keys: RedisKeys, *, connections: int, timeout_s: float
) -> tuple[ServedStore, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = RedisSettings(
        url=redis_server.url, key_prefix=keys.prefix, max_connections=connections
    )
    metrics = ApiMetrics.create(registry)
    return ServedStore.open(settings, timeout_s=timeout_s, metrics=metrics), registry


async def test_a_burst_beyond_the_pool_waits_for_a_connection(
    redis_server: RedisServer, keys: RedisKeys
) -> None:
    stored = RecommendationList(
        model_version="v1", computed_at=datetime.now(UTC), items=["i1"], scores=[1.0]
    )
    writer = connect(RedisSettings(url=redis_server.url, key_prefix=keys.prefix))
    await replace_lists(writer, keys, MODEL, {"u1": stored})
    await writer.aclose()
    store, registry = _store(redis_server, keys, connections=2, timeout_s=2.0)
    try:
        views = await asyncio.gather(*(store.read(MODEL, "u1") for _ in range(50)))
        answers = await asyncio.gather(*(store.ping() for _ in range(10)))
    finally:
        await store.close()
    assert {view.recommendations is not None for view in views} == {True}
    assert all(isinstance(view, ServedView) for view in views)
    assert answers == [True] * 10
    assert (
        registry.get_sample_value("reco_api_redis_errors_total", {"error_type": "PoolExhausted"})
        is None
    )


async def test_connections_busy_past_the_timeout_answer_unavailable(
    redis_server: RedisServer, keys: RedisKeys
) -> None:
    store, registry = _store(redis_server, keys, connections=1, timeout_s=0.2)
    redis_server.client().execute_command("CLIENT", "PAUSE", "700", "ALL")  # commands hang
    try:
        outcomes = await asyncio.gather(
            store.read(MODEL, "u1"), store.read(MODEL, "u2"), return_exceptions=True
        )
    finally:
        await asyncio.sleep(0.7)  # the pause is over: the pool can close cleanly
        await store.close()
    # the first read holds the only connection while Redis is paused (however it ends); the
    # second waits for it no longer than the timeout
    assert isinstance(outcomes[1], StoreUnavailable)
    assert "busy" in str(outcomes[1])
    exhausted = {"error_type": "PoolExhausted"}
    assert registry.get_sample_value("reco_api_redis_errors_total", exhausted) == 1
