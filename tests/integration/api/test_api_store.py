"""The API's Redis boundary against a real Redis: one pipelined connection, fail fast, reconnect."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from api_procs import RedisServer
from prometheus_client import CollectorRegistry

from reco_api.metrics import ApiMetrics
from reco_api.store import ServedStore, StoreUnavailable
from reco_common.contracts import RecommendationList, RedisKeys, decode_recommendations
from reco_common.redis_store import connect, replace_lists
from reco_common.settings import RedisSettings

MODEL = "default"


def _store(
    redis_server: RedisServer, keys: RedisKeys, *, timeout_s: float, url: str | None = None
) -> tuple[ServedStore, CollectorRegistry]:
    registry = CollectorRegistry()
    settings = RedisSettings(url=url or redis_server.url, key_prefix=keys.prefix)
    metrics = ApiMetrics.create(registry)
    return ServedStore.open(settings, timeout_s=timeout_s, metrics=metrics), registry


async def _seed(redis_server: RedisServer, keys: RedisKeys, users: int) -> RecommendationList:
    stored = RecommendationList(
        model_version="v1", computed_at=datetime.now(UTC), items=["i1", "i2"], scores=[1.0, 0.5]
    )
    writer = connect(RedisSettings(url=redis_server.url, key_prefix=keys.prefix))
    await replace_lists(writer, keys, MODEL, {f"u{k}": stored for k in range(users)})
    await writer.aclose()
    return stored


def _reading_clients(redis_server: RedisServer) -> int:
    """Connections whose last command was a read of the API's (the seeding one's was MSET)."""
    listed = redis_server.client().execute_command("CLIENT", "LIST")
    text = listed.decode() if isinstance(listed, bytes) else str(listed)
    return sum(1 for line in text.splitlines() if " cmd=get " in line or " cmd=ping " in line)


async def test_a_burst_of_reads_shares_one_connection_and_each_gets_its_own_value(
    redis_server: RedisServer, keys: RedisKeys
) -> None:
    stored = await _seed(redis_server, keys, users=50)
    store, registry = _store(redis_server, keys, timeout_s=2.0)
    try:
        users = [f"u{k}" for k in range(50)] + ["nobody"] * 10
        views = await asyncio.gather(*(store.read_list(MODEL, user) for user in users))
        answers = await asyncio.gather(*(store.ping() for _ in range(10)))
        connections = _reading_clients(redis_server)
    finally:
        await store.close()
    assert [decode_recommendations(v) for v in views[:50] if v] == [stored] * 50
    assert views[50:] == [None] * 10
    assert answers == [True] * 10
    assert connections == 1
    assert registry.get_sample_value("reco_api_redis_latency_seconds_count") == 60


async def test_a_hung_redis_answers_unavailable_within_the_timeout_then_recovers(
    redis_server: RedisServer, keys: RedisKeys
) -> None:
    await _seed(redis_server, keys, users=2)
    store, registry = _store(redis_server, keys, timeout_s=0.2)
    try:
        assert await store.read_list(MODEL, "u1") is not None
        redis_server.client().execute_command("CLIENT", "PAUSE", "700", "ALL")  # commands hang
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(store.read_list(MODEL, f"u{k % 2}") for k in range(20)), return_exceptions=True
        )
        waited = time.monotonic() - started
        await asyncio.sleep(0.7)  # the pause is over
        after = await store.read_list(MODEL, "u1")
    finally:
        await store.close()
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes)
    assert waited < 0.5  # one timeout for all of them, not one per queued command
    assert after is not None  # a new connection, by itself
    timeouts = registry.get_sample_value(
        "reco_api_redis_errors_total", {"error_type": "TimeoutError"}
    )
    assert timeouts == 20


async def test_a_redis_that_is_not_there_answers_unavailable_at_once(
    redis_server: RedisServer, keys: RedisKeys
) -> None:
    store, registry = _store(redis_server, keys, timeout_s=0.5, url="redis://127.0.0.1:9/0")
    try:
        started = time.monotonic()
        outcome = await asyncio.gather(store.read_list(MODEL, "u1"), return_exceptions=True)
        ready = await store.ping()
    finally:
        await store.close()
    assert isinstance(outcome[0], StoreUnavailable)
    assert ready is False
    refused = {"error_type": "ConnectionRefusedError"}
    assert registry.get_sample_value("reco_api_redis_errors_total", refused) == 2  # read, ping
    assert time.monotonic() - started < 1.0
