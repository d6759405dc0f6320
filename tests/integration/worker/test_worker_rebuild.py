"""Redis is a rebuildable view: a rebuild from the log (and the trainer's archive for what the
topic no longer retains), run by hand or automatically after a loss of Redis' data mid-stream,
restores the state of a clean pass."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import RecordsToDelete
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from worker_stack import (
    BASE,
    MODEL,
    all_applied,
    arrays,
    clean_pass,
    namespaced,
    numbered,
    produce,
    running,
    snapshot,
    until,
)

from reco_common.contracts import ContractError, UserAction, decode, encode
from reco_common.kafka import Delivery, admin_client, ensure_topics
from reco_common.settings import KafkaSettings, RedisSettings
from reco_common.storage import ObjectStore
from reco_trainer.snapshot import archive_topic
from reco_worker.consumer import ActionHandler
from reco_worker.metrics import WorkerMetrics
from reco_worker.rebuild import LogFold, Rebuilder, rebuild_from_log, rebuilder
from reco_worker.scoring import ServingModel
from reco_worker.settings import WorkerSettings

REBUILDS = "reco_worker_rebuilds_total"


async def wipe(redis: Redis, prefix: str) -> None:
    """Data loss, scoped to the test's keys (FLUSHALL would wipe every other test's data); one
    ``UNLINK`` of every key found, so that it is one step like a flush, not a slow sweep that
    would also delete what a recovery already wrote."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    if keys:
        await redis.unlink(*keys)


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
    clean = await clean_pass(settings, events, producer, redis)

    await wipe(redis, prefix)
    report = await rebuild_from_log(settings, model_uri=model_v1)
    assert (report.events, report.users, report.stale_lists) == (len(events), 40, 0)
    assert await snapshot(redis, prefix) == clean

    # A rebuild on intact data changes nothing; a rebuild of some users restores just them.
    await rebuild_from_log(settings, model_uri=model_v1)
    assert await snapshot(redis, prefix) == clean
    await wipe(redis, prefix)
    some = await rebuild_from_log(settings, model_uri=model_v1, users=["u1", "u2"])
    assert some.users == 2
    keys = redis_settings.keys
    of_some = {
        key.removeprefix(prefix)
        for user in ("u1", "u2")
        for key in (keys.history(user), keys.recommendations(MODEL, user))
    }
    assert await snapshot(redis, prefix) == {
        key: value for key, value in clean.items() if key in of_some
    }


async def test_redis_wiped_mid_stream_is_rebuilt_automatically(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    redis_settings: RedisSettings,
) -> None:
    clean_settings = make_settings(model_v1)
    events = [numbered(n) for n in range(1200)]
    clean = await clean_pass(clean_settings, events, producer, redis)

    settings = namespaced(clean_settings, "w", generation_check_s=0.5, max_batch=50)
    prefix, topic = settings.common.redis.key_prefix, settings.common.kafka.topics.user_actions
    rebuilt = REGISTRY.get_sample_value(REBUILDS, {"outcome": "done"}) or 0.0

    async def rebuilds() -> bool:
        return (REGISTRY.get_sample_value(REBUILDS, {"outcome": "done"}) or 0.0) > rebuilt

    async with running(settings):
        await produce(producer, topic, events[:600])
        await until(lambda: all_applied(redis, settings, events[:600]), what="the first half")
        trickle = asyncio.create_task(produce(producer, topic, events[600:], chunk=20))
        await wipe(redis, prefix)  # everything: histories, lists, fences, active record, marker
        await until(rebuilds, what="the automatic rebuild")
        await trickle
        await until(lambda: all_applied(redis, settings, events), what="the second half")
    assert await snapshot(redis, prefix) == clean


async def expire(kafka: KafkaSettings, before: dict[int, int]) -> None:
    """Retention, on demand: the records of each partition before its offset are deleted."""
    topic = kafka.topics.user_actions
    async with admin_client(kafka) as admin:
        await admin.delete_records(
            {TopicPartition(topic, p): RecordsToDelete(before_offset=o) for p, o in before.items()}
        )


async def test_a_rebuild_past_the_retention_replays_the_archive_then_the_topic(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    s3_store: ObjectStore,
    s3_root: str,
) -> None:
    events = [numbered(n) for n in range(1200)]
    clean = await clean_pass(make_settings(model_v1), events, producer, redis)

    # The same events on a topic of its own: the first 800 archived by the trainer, then expired
    # from the topic (all of them on partitions 0 and 1, half on partition 2, which the topic
    # still holds but the rebuild must not apply twice); the last 400 only in the topic.
    settings = namespaced(make_settings(model_v1), "arch", archive_uri=s3_root)
    kafka, prefix = settings.common.kafka, settings.common.redis.key_prefix
    await produce(producer, kafka.topics.user_actions, events[:800])
    snapshot_of = await archive_topic(kafka=kafka, store=s3_store, group="trainer", timeout_s=60)
    assert snapshot_of.records == 800
    archived_to = snapshot_of.offsets
    await expire(kafka, {0: archived_to[0], 1: archived_to[1], 2: archived_to[2] // 2})
    await produce(producer, kafka.topics.user_actions, events[800:])

    report = await rebuild_from_log(settings, model_uri=model_v1)
    assert (report.events, report.archived, report.lost) == (1200, 800, {})
    assert await snapshot(redis, prefix) == clean

    # Offsets expired before they were archived are reported lost, not silently skipped.
    await expire(kafka, {0: archived_to[0] + 5})
    lossy = namespaced(settings, "lossy")
    lossy = lossy.model_copy(update={"common": lossy.common.model_copy(update={"kafka": kafka})})
    report = await rebuild_from_log(lossy, model_uri=model_v1)
    assert report.lost == {0: 5}
    assert report.events == 1195


def hostile_log() -> list[ConsumerRecord[bytes, bytes]]:
    """Numbered events as records, with what a live batch meets: events out of time order,
    redeliveries, explicit weights, a timestamp far in the future (clamped), a record keyed by
    another user and one that does not decode; 30 events per user (histories of 20 trim)."""
    records: list[ConsumerRecord[bytes, bytes]] = []
    offsets = [0, 0, 0]

    def append(partition: int, key: bytes, value: bytes) -> None:
        records.append(record(partition, offsets[partition], key, value))
        offsets[partition] += 1

    for n in range(1200):
        event = numbered(n)
        ts = BASE + timedelta(seconds=(n * 7919) % 1200)  # out of order
        if n % 97 == 0:
            ts = BASE + timedelta(days=30)
        event = msgspec.structs.replace(event, ts=ts, weight=2.5 if n % 11 == 0 else None)
        key = b"u-other" if n == 501 else event.user_id.encode()
        value = b"{not json" if n == 601 else encode(event)
        append(n % 40 % 3, key, value)  # a user's events on one partition
        if n % 50 == 0:  # produced twice
            append(n % 40 % 3, key, value)
    return records


def record(partition: int, offset: int, key: bytes, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="user-actions",
        partition=partition,
        offset=offset,
        timestamp=int((BASE + timedelta(hours=1)).timestamp() * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=(),
    )


async def live_pass(
    work: Rebuilder,
    model: ServingModel,
    metrics: WorkerMetrics,
    log: list[ConsumerRecord[bytes, bytes]],
) -> None:
    """``log`` through the live worker's batch handler, in batches of 50."""
    handler = ActionHandler(
        lists=work.lists,
        history=work.history,
        model=lambda: model,
        policy=work.policy,
        max_future_skew_s=work.max_future_skew_s,
        metrics=metrics,
        writable=asyncio.Event(),
    )
    deliveries = []
    for r in log:
        try:
            deliveries.append(Delivery(r, decode(UserAction, r.value)))
        except ContractError:
            continue  # dead-lettered by the consumer, never seen by the handler
    for start in range(0, len(deliveries), 50):
        await handler(deliveries[start : start + 50])


async def state_after(
    settings: WorkerSettings,
    redis: Redis,
    *,
    live: list[ConsumerRecord[bytes, bytes]],
    folded: list[ConsumerRecord[bytes, bytes]],
) -> tuple[dict[str, Any], LogFold]:
    """The state after the live handler took ``live``, then a rebuild folded ``folded``."""
    model = ServingModel(name=MODEL, version="v1", uri="mem://v1", arrays=arrays(seed=1))
    metrics = WorkerMetrics.create()
    work = rebuilder(settings, redis, model, metrics)
    await live_pass(work, model, metrics, live)
    fold = LogFold(max_len=settings.history_len, max_future_skew_s=work.max_future_skew_s)
    if folded:
        fold.add_records(folded)
        await work.write(fold)
    return await snapshot(redis, settings.common.redis.key_prefix), fold


async def test_the_fold_of_a_rebuild_equals_the_live_handler_batch_by_batch(
    make_settings: Callable[..., WorkerSettings], redis: Redis
) -> None:
    """The rebuild's fold (each user written and scored once) against the live worker's batch
    handler (batches of 50, the history read back and trimmed each time) on the same records,
    on real Redis and the real scoring: the same histories and lists."""
    log = hostile_log()
    settings = make_settings(None)
    live, _ = await state_after(
        namespaced(settings, "live", history_len=20), redis, live=log, folded=[]
    )
    folded, fold = await state_after(
        namespaced(settings, "fold", history_len=20), redis, live=[], folded=log
    )
    assert (fold.events, fold.skipped) == (len(log) - 2, 2)
    assert len(live) == 80  # 40 histories and 40 lists
    assert folded == live


async def test_a_rebuild_over_histories_redis_still_holds_scores_what_redis_holds(
    make_settings: Callable[..., WorkerSettings], redis: Redis
) -> None:
    """Redis kept histories from events the log no longer has (expired without an archive):
    a rebuild from the rest adds to them, and a user whose stored history holds more than the
    fold is scored as stored. The state equals the live handler's over the whole log."""
    log = hostile_log()
    first, rest = log[: len(log) // 2], log[len(log) // 2 :]
    settings = make_settings(None)
    live, _ = await state_after(
        namespaced(settings, "live", history_len=20), redis, live=log, folded=[]
    )
    kept, fold = await state_after(
        namespaced(settings, "kept", history_len=20), redis, live=first, folded=rest
    )
    assert len(fold.users) == 40  # every user has events in both halves
    assert len(live) == 80
    assert kept == live


async def test_a_user_on_two_partitions_is_written_again_whole_after_the_later_one(
    make_settings: Callable[..., WorkerSettings],
    producer: AIOKafkaProducer,
    redis: Redis,
) -> None:
    """A rebuild writes a partition's users while it reads the next partition; a user with
    events on two partitions (a producer that chose the partition) is written after the first
    and again, whole, after the second. The state equals one fold of the whole log written at
    once."""
    settings = namespaced(make_settings(None), "span", history_len=20)
    topic = settings.common.kafka.topics.user_actions
    await ensure_topics(settings.common.kafka, topic)  # the contract's partitions
    log: list[ConsumerRecord[bytes, bytes]] = []
    offsets: dict[int, int] = {}
    for n in range(1200):  # 30 events per user: a history of 20 trims
        event = numbered(n)
        user = int(event.user_id.removeprefix("u"))
        # Users 0-3 alternate between partitions 0 and 2; every user's last 5 events are on
        # a partition read later (3, 4 or 5).
        partition = (2 * (n // 40 % 2) if user < 4 else user % 3) + 3 * (n >= 1000)
        key, value = event.user_id.encode(), encode(event)
        await producer.send_and_wait(topic, value, key=key, partition=partition)
        log.append(record(partition, offsets.setdefault(partition, 0), key, value))
        offsets[partition] += 1
    model = ServingModel(name=MODEL, version="v1", uri="mem://v1", arrays=arrays(seed=1))

    rebuilt = rebuilder(settings, redis, model, WorkerMetrics.create())
    report = await rebuilt.run(settings.common.kafka)
    assert (report.events, report.users, report.stale_lists) == (1200, 40, 0)

    whole = namespaced(settings, "whole")
    fold = LogFold(max_len=20, max_future_skew_s=rebuilt.max_future_skew_s)
    fold.add_records(sorted(log, key=lambda r: (r.partition, r.offset)))  # as the rebuild reads
    await rebuilder(whole, redis, model, WorkerMetrics.create()).write(fold)
    assert await snapshot(redis, settings.common.redis.key_prefix) == await snapshot(
        redis, whole.common.redis.key_prefix
    )
