"""A worker paused past its session timeout while it holds a batch cannot overwrite newer lists.

The same numbered events go through one clean worker, and through a worker that gets stuck in
the middle of a batch (a proxy holds its Redis requests) and is then paused with SIGSTOP past the
group's session timeout. A second worker takes its partitions and processes everything, newer
events included; then the first one resumes and finishes its stale batch. No event follows, so
nothing would repair a stale write: the fence refuses its lists, and the final state equals the
clean pass (without the fence, the test fails).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from worker_stack import (
    HoldingProxy,
    all_applied,
    free_port,
    metric,
    namespaced,
    numbered,
    produce,
    running,
    snapshot,
    until,
    worker_process,
)

from reco_common.settings import RedisSettings
from reco_worker.settings import WorkerSettings

SESSION_S = 6.0  # the broker's smallest allowed session timeout: a quick eviction
STALE = "reco_worker_stale_lists_refused_total"


async def test_a_paused_worker_resumed_after_losing_its_partitions_changes_nothing(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    redis_settings: RedisSettings,
    tmp_path: Path,
) -> None:
    events = [numbered(n) for n in range(800)]
    clean_settings = make_settings(model_v1)
    async with running(clean_settings):
        await produce(producer, clean_settings.common.kafka.topics.user_actions, events)
        await until(lambda: all_applied(redis, clean_settings, events), what="the clean pass")
    clean = await snapshot(redis, redis_settings.key_prefix)

    upstream = urlsplit(redis_settings.url)
    proxy = HoldingProxy((upstream.hostname or "127.0.0.1", upstream.port or 6379))
    proxied = redis_settings.model_copy(
        update={"url": f"redis://127.0.0.1:{await proxy.start()}/0"}
    )
    faulty = namespaced(clean_settings, "f", session_timeout_s=SESSION_S)
    # A long batch bound: the paused batch must still be running when the worker resumes.
    paused = faulty.model_copy(
        update={
            "common": faulty.common.model_copy(
                update={
                    "redis": proxied.model_copy(
                        update={"key_prefix": faulty.common.redis.key_prefix}
                    )
                }
            ),
            "http_port": free_port(),
            "max_batch": 200,
            "batch_timeout_s": 120.0,
        }
    )
    topic = faulty.common.kafka.topics.user_actions
    base = f"http://127.0.0.1:{paused.http_port}"
    async with (
        worker_process(paused, tmp_path / "paused.log") as process,
        httpx.AsyncClient(base_url=base, timeout=5) as http,
    ):

        async def ready() -> bool:
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await until(ready, what="the first worker to be ready")
        await produce(producer, topic, events[:400])
        await until(lambda: all_applied(redis, faulty, events[:400]), what="the first events")

        proxy.hold()
        await produce(producer, topic, events[400:600])
        await until(lambda: proxy.held > 0, what="the first worker to be stuck mid-batch")
        process.send_signal(signal.SIGSTOP)
        try:
            async with running(faulty):  # gets the partitions once the paused member is evicted
                await produce(producer, topic, events[600:])
                await until(lambda: all_applied(redis, faulty, events), what="the second worker")
                proxy.release()
                process.send_signal(signal.SIGCONT)

                async def refused() -> bool:
                    return await metric(http, STALE) > 0

                await until(refused, what="the resumed worker's stale lists to be refused")
                await until(lambda: all_applied(redis, faulty, events), what="both workers")
        finally:
            proxy.release()
            process.send_signal(signal.SIGCONT)
            await proxy.close()
    assert await snapshot(redis, faulty.common.redis.key_prefix) == clean
