"""Redis is a rebuildable view: ``reco-worker rebuild`` restores the state of a clean pass."""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from worker_stack import all_applied, numbered, produce, running, snapshot, until

from reco_common.settings import RedisSettings
from reco_worker.rebuild import rebuild_from_log
from reco_worker.settings import WorkerSettings


async def wipe(redis: Redis, prefix: str) -> None:
    """Data loss, scoped to the test's keys (FLUSHALL would wipe every other test's data)."""
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        await redis.unlink(key)


async def test_a_rebuild_from_the_log_restores_the_state_of_a_clean_pass(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    redis_settings: RedisSettings,
) -> None:
    settings = make_settings(model_v1)
    events = [numbered(n) for n in range(1200)]  # 30 per user: histories of 30 are full
    prefix = redis_settings.key_prefix
    async with running(settings):
        await produce(producer, settings.common.kafka.topics.user_actions, events)
        await until(lambda: all_applied(redis, settings, events), what="the clean pass")
    clean = await snapshot(redis, prefix)

    await wipe(redis, prefix)
    report = await rebuild_from_log(settings, model_uri=model_v1)
    assert (report.events, report.users, report.stale_lists) == (len(events), 40, 0)
    assert await snapshot(redis, prefix) == clean

    # A rebuild on intact data changes nothing; a rebuild of some users restores just them.
    again = await rebuild_from_log(settings, model_uri=model_v1)
    assert again.stale_lists == again.users
    await wipe(redis, prefix)
    some = await rebuild_from_log(settings, model_uri=model_v1, users=["u1", "u2"])
    assert some.users == 2
    assert await snapshot(redis, prefix) == {
        key: value for key, value in clean.items() if key.endswith((":u1", ":u2"))
    }
