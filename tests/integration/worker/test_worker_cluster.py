"""The worker on a real Redis Cluster: the state it writes equals the state it writes on one
Redis, and a primary killed mid-stream (its replica promoted) still ends in that state while
the API's store reads the users' lists throughout (failing fast for the dead primary's users)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from cluster_nodes import cluster_up, kill, nodes, primary_of
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError
from worker_stack import (
    MODEL,
    N_USERS,
    all_applied,
    clean_pass,
    namespaced,
    numbered,
    on_redis,
    produce,
    running,
    snapshot,
    until,
    worker_process,
)

from reco_api.metrics import ApiMetrics
from reco_api.store import ServedStore, StoreUnavailable
from reco_common.contracts import UserAction
from reco_common.redis_store import RedisClient
from reco_common.settings import RedisSettings
from reco_worker.settings import WorkerSettings

FAILOVER_WAIT_S = 120.0


async def _applied(redis: RedisClient, settings: WorkerSettings, events: list[UserAction]) -> bool:
    try:
        return await all_applied(redis, settings, events)
    except (RedisError, OSError):  # the killed primary's slots, until its replica takes over
        return False


async def test_the_worker_writes_the_same_state_on_a_cluster(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    cluster_redis: RedisClient,
    cluster_settings: RedisSettings,
) -> None:
    events = [numbered(n) for n in range(600)]
    single = make_settings(model_v1)
    clean = await clean_pass(single, events, producer, redis)

    clustered = on_redis(namespaced(single, "c", max_batch=100), cluster_settings)
    async with running(clustered):
        await produce(producer, clustered.common.kafka.topics.user_actions, events)
        await until(lambda: all_applied(cluster_redis, clustered, events), what="the cluster pass")
    assert await snapshot(cluster_redis, cluster_settings.key_prefix) == clean
    assert len(clean) == 80  # 40 users: a list and a history each


async def test_a_primary_killed_mid_stream_ends_in_the_state_of_a_clean_pass(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    cluster_redis: RedisClient,
    cluster_settings: RedisSettings,
    tmp_path: Path,
) -> None:
    events = [numbered(n) for n in range(1000)]
    single = make_settings(model_v1)
    clean = await clean_pass(single, events, producer, redis)

    faulty = on_redis(namespaced(single, "f", max_batch=50), cluster_settings)
    topic = faulty.common.kafka.topics.user_actions
    victim = primary_of(cluster_settings.keys.history("u1"))
    api = ApiReads(cluster_settings)
    try:
        async with worker_process(faulty, tmp_path / "worker.log"):
            await produce(producer, topic, events[:100])
            await until(lambda: _applied(cluster_redis, faulty, events[:100]), what="a first part")
            reading = asyncio.create_task(api.run())
            trickle = asyncio.create_task(produce(producer, topic, events[100:], chunk=10))
            await asyncio.sleep(0.3)  # mid-trickle: 90 chunks, 20 ms apart
            kill(victim)  # its replica is promoted after the node timeout (2 s)
            await trickle
            await until(
                lambda: _applied(cluster_redis, faulty, events),
                what="every event applied after the failover",
                timeout_s=FAILOVER_WAIT_S,
            )
            outcomes = await api.stop(reading)
    finally:
        cluster_up()  # the killed node comes back as a replica
    assert any(n.port == victim.port and not n.primary for n in nodes())  # it was failed over
    assert await snapshot(cluster_redis, cluster_settings.key_prefix) == clean
    # The API's reads failed fast for the dead primary's users only, and not once it was over.
    assert outcomes["unavailable"] > 0
    # How many reads fail depends on how long the failover takes on a loaded machine; that the
    # others went on being read (and the last round was whole) is the property.
    assert outcomes["read"] > 0
    assert set(outcomes) == {"read", "unavailable"}
    assert api.last_round_complete


class ApiReads:
    """The API's store reading every user's list in turn while the cluster fails over."""

    def __init__(self, settings: RedisSettings) -> None:
        metrics = ApiMetrics.create(CollectorRegistry())
        self._store = ServedStore.open(settings, timeout_s=0.25, metrics=metrics)
        self._outcomes: Counter[str] = Counter()
        self._stopping = asyncio.Event()
        self.last_round_complete = False

    async def run(self) -> None:
        users = sorted({numbered(n).user_id for n in range(N_USERS)})
        while not self._stopping.is_set():
            results = await asyncio.gather(
                *(self._store.read_list(MODEL, user) for user in users), return_exceptions=True
            )
            for result in results:
                self._outcomes[self._kind(result)] += 1
            self.last_round_complete = all(isinstance(r, bytes) for r in results)
            await asyncio.sleep(0.02)

    async def stop(self, task: asyncio.Task[None]) -> Counter[str]:
        self._stopping.set()
        await task
        await self._store.close()
        return self._outcomes

    @staticmethod
    def _kind(result: object) -> str:
        if isinstance(result, bytes):
            return "read"
        return "unavailable" if isinstance(result, StoreUnavailable) else repr(result)
