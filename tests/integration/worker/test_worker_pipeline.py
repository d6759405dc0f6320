"""The worker on the real stack: events update lists; faults end in the state of one clean pass."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from worker_stack import (
    MODEL,
    N_USERS,
    all_applied,
    committed_and_end,
    dead_letters,
    namespaced,
    numbered,
    produce,
    running,
    snapshot,
    until,
    worker_process,
)

from reco_common.contracts import ActionType, RecommendationList, UserAction, encode
from reco_common.kafka import publish
from reco_common.redis_store import read_active, read_list
from reco_common.settings import KafkaSettings, RedisSettings
from reco_worker.settings import WorkerSettings


async def test_an_event_updates_the_users_list(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    redis_settings: RedisSettings,
    kafka_settings: KafkaSettings,
) -> None:
    keys = redis_settings.keys
    async with running(make_settings(model_v1)):
        # The active record (the API's fallback) is the controller's to write, not a worker's.
        assert await read_active(redis, keys, MODEL) is None
        event = UserAction(
            event_id="first",
            user_id="u0",
            item_id="i7",
            action=ActionType.CLICK,
            ts=datetime.now(UTC),
        )
        await publish(producer, kafka_settings.topics.user_actions, "u0", event)

        async def written() -> RecommendationList | None:
            return await read_list(redis, keys, MODEL, "u0")

        await until(written, what="u0's list")
        listed = await written()
        assert listed is not None
        assert (listed.event_id, listed.event_ts, listed.model_version) == ("first", event.ts, "v1")
        assert len(listed.items) == 20
        assert "i7" not in listed.items
        assert listed.scores == sorted(listed.scores, reverse=True)
        assert await redis.zcard(keys.history("u0")) == 1


async def test_restart_and_kill_end_in_the_state_of_one_clean_pass(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    tmp_path: Path,
) -> None:
    events = [numbered(n) for n in range(1200)]
    users = {e.user_id for e in events}
    clean_settings = make_settings(model_v1)
    faulty_settings = namespaced(clean_settings, "f", max_batch=50)

    def lists_done(settings: WorkerSettings) -> Awaitable[bool]:
        return all_applied(redis, settings, events)

    async def lists_written(settings: WorkerSettings) -> int:
        keys = settings.common.redis.keys
        return sum(
            1 for v in await redis.mget([keys.recommendations(MODEL, u) for u in users]) if v
        )

    # One clean pass.
    async with running(clean_settings):
        await produce(producer, clean_settings.common.kafka.topics.user_actions, events)
        await until(lambda: lists_done(clean_settings), what="the clean pass")
    clean = await snapshot(redis, redis_settings.key_prefix)

    # The same events through a worker killed with SIGKILL mid-stream, then a consumer stopped
    # mid-stream and restarted.
    topic = faulty_settings.common.kafka.topics.user_actions
    async with worker_process(faulty_settings, tmp_path / "killed.log") as process:
        # The worker consumes first (its start takes longer than a whole trickle would), then is
        # killed while the trickle goes on: events are left to redeliver whatever its speed.
        await produce(producer, topic, events[:50])
        await until(lambda: _some(lists_written(faulty_settings)), what="the first lists")
        trickle = asyncio.create_task(produce(producer, topic, events[50:800], chunk=50))
        await asyncio.sleep(0.1)  # mid-trickle: 15 chunks, 20 ms apart
        process.kill()
        await trickle
    after_kill, end = await committed_and_end(faulty_settings)
    assert after_kill < end == 800  # the kill left events to redeliver

    async def progressed() -> bool:
        return (await committed_and_end(faulty_settings))[0] > after_kill

    async with running(faulty_settings):
        trickle = asyncio.create_task(produce(producer, topic, events[800:1000], chunk=20))
        await until(progressed, what="the restarted worker to commit")
    await trickle
    async with running(faulty_settings):
        await produce(producer, topic, events[1000:])
        await until(lambda: lists_done(faulty_settings), what="the faulty pass")
    faulty = await snapshot(redis, faulty_settings.common.redis.key_prefix)

    assert len(clean) == 2 * N_USERS
    assert faulty == clean


async def _some(count: Any) -> bool:
    return await count >= 1


async def test_sigterm_finishes_writes_and_commits_what_it_fetched(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    tmp_path: Path,
) -> None:
    settings = make_settings(model_v1, max_batch=20)
    keys = settings.common.redis.keys
    events = [numbered(n) for n in range(400)]  # 10 per user: no history is trimmed

    async def histories() -> int:
        pipe = redis.pipeline(transaction=False)
        for n in range(N_USERS):
            pipe.zcard(keys.history(f"u{n}"))
        return sum(await pipe.execute())

    async with worker_process(settings, tmp_path / "worker.log") as process:
        trickle = asyncio.create_task(
            produce(producer, settings.common.kafka.topics.user_actions, events, chunk=10)
        )
        await until(lambda: _some(histories()), what="the first histories")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=settings.grace_s + 10) == 0
        await trickle
    committed, _ = await committed_and_end(settings)
    assert 0 < committed == await histories()


async def test_bad_input_is_dead_lettered_or_handled_and_the_loop_goes_on(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
) -> None:
    topic = kafka_settings.topics.user_actions
    keys = redis_settings.keys
    now = datetime.now(UTC)
    future = UserAction(
        event_id="future",
        user_id="u3",
        item_id="i1",
        action=ActionType.VIEW,
        ts=now + timedelta(days=365),
    )
    unknown = UserAction(
        event_id="unknown", user_id="u5", item_id="no-such-item", action=ActionType.CART, ts=now
    )
    wrong_key = UserAction(
        event_id="wrong", user_id="u6", item_id="i2", action=ActionType.VIEW, ts=now
    )
    last = UserAction(event_id="last", user_id="u7", item_id="i3", action=ActionType.CLICK, ts=now)
    async with running(make_settings(model_v1)):
        await producer.send_and_wait(topic, b"not json", key=b"u1")
        await producer.send_and_wait(topic, b'{"schema_version": 1, "user_id": "u2"}', key=b"u2")
        await producer.send_and_wait(topic, encode(wrong_key), key=b"someone-else")
        for event in (future, unknown, last):
            await publish(producer, topic, event.user_id, event)
        await until(
            lambda: read_list(redis, keys, MODEL, "u7"), what="the valid event after bad ones"
        )
        dead = await dead_letters(kafka_settings, topic, count=3)
    assert [d[0] for d in dead] == ["invalid", "invalid", "rejected"]
    assert "keyed by user id" in dead[2][1]
    assert await read_list(redis, keys, MODEL, "u6") is None
    ((_, clamped),) = await redis.zrange(keys.history("u3"), 0, -1, withscores=True)
    assert clamped < (now + timedelta(minutes=10)).timestamp()
    unknown_list = await read_list(redis, keys, MODEL, "u5")
    assert unknown_list is not None
    assert unknown_list.items[:5] == ["i0", "i1", "i2", "i3", "i4"]  # cold start, no usable item
    assert await redis.zcard(keys.history("u5")) == 1
