"""The consumer's delivery guarantees, against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from reco_common.contracts import DlqHeader, Topics, UserAction, encode
from reco_common.kafka import Delivery, EventConsumer, Rejection, RetryPolicy, ensure_topics
from reco_common.metrics import ConsumerMetrics
from reco_common.settings import KafkaSettings

N_EVENTS = 60


def _action(n: int) -> UserAction:
    return UserAction(
        event_id=f"e{n}",
        user_id=f"u{n % 7}",
        item_id=f"i{n}",
        action="view",
        ts=datetime.now(UTC),
    )


async def _produce(producer: AIOKafkaProducer, topic: str, values: list[bytes]) -> None:
    for n, value in enumerate(values):
        await producer.send_and_wait(topic, value, key=f"u{n % 7}".encode())


class Recorder:
    """A handler that records what it saw and can be told to fail."""

    def __init__(
        self, *, fail: bool = False, reject: set[str] | None = None, stop_after: int = 0
    ) -> None:
        self.seen: list[str] = []
        self.fail = fail
        self.reject = reject or set()
        self.calls = 0
        self.stop_after = stop_after
        self.enough = asyncio.Event()

    async def __call__(self, batch: Sequence[Delivery[UserAction]]) -> list[Rejection]:
        self.calls += 1
        if self.fail:
            raise ConnectionError("downstream unavailable")
        self.seen.extend(d.event.event_id for d in batch)
        if self.stop_after and len(self.seen) >= self.stop_after:
            self.enough.set()
        return [
            Rejection(d.record, "rejected by handler")
            for d in batch
            if d.event.event_id in self.reject
        ]


def _consumer(
    settings: KafkaSettings, producer: AIOKafkaProducer, handler: Recorder, group: str
) -> EventConsumer[UserAction]:
    return EventConsumer(
        settings=settings,
        topic=settings.topics.user_actions,
        group_id=group,
        model=UserAction,
        handler=handler,
        producer=producer,
        metrics=ConsumerMetrics.for_service("test"),
        max_records=7,
        retry=RetryPolicy(attempts=2, initial_wait_s=0.01, max_wait_s=0.05),
    )


async def _run_until(
    consumer: EventConsumer[UserAction], predicate: Callable[[], bool], timeout_s: float = 30
) -> None:
    """Run the consumer until ``predicate`` holds (polled; bounded by ``timeout_s``)."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task


async def _committed(settings: KafkaSettings, group: str) -> int:
    """The sum of the group's committed offsets, as the broker reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for meta in offsets.values() if meta.offset > 0)


async def _dlq_records(settings: KafkaSettings, topic: str, count: int) -> list[ConsumerRecord]:
    dlq = AIOKafkaConsumer(
        Topics.dlq(topic),
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await dlq.start()
    try:
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(20):
            while len(records) < count:
                batch = await dlq.getmany(timeout_ms=200)
                records.extend(r for part in batch.values() for r in part)
    finally:
        await dlq.stop()
    return records


async def test_nothing_is_committed_before_processing_and_a_restart_loses_nothing(
    kafka_settings: KafkaSettings, producer: AIOKafkaProducer, unique: str
) -> None:
    topic = kafka_settings.topics.user_actions
    await ensure_topics(kafka_settings, topic)
    await _produce(producer, topic, [encode(_action(n)) for n in range(N_EVENTS)])
    group = f"g{unique}"

    failing = Recorder(fail=True)
    consumer = _consumer(kafka_settings, producer, failing, group)
    await consumer.start()
    await _run_until(consumer, lambda: failing.calls >= 4)
    await consumer.stop()
    assert await _committed(kafka_settings, group) == 0

    # The first consumer stops mid-stream, right after the batch that crossed half-way.
    first = Recorder(stop_after=N_EVENTS // 2)
    consumer = _consumer(kafka_settings, producer, first, group)
    await consumer.start()
    async with asyncio.timeout(30):
        await consumer.run(first.enough)
    await consumer.stop()
    assert N_EVENTS // 2 <= len(first.seen) < N_EVENTS

    second = Recorder()
    consumer = _consumer(kafka_settings, producer, second, group)
    await consumer.start()
    await _run_until(
        consumer, lambda: {*first.seen, *second.seen} >= {f"e{n}" for n in range(N_EVENTS)}
    )
    await consumer.stop()
    assert await _committed(kafka_settings, group) == N_EVENTS
    assert not set(first.seen) & set(second.seen), "a committed event was delivered again"


async def test_bad_records_are_dead_lettered_with_their_reason_and_consumption_goes_on(
    kafka_settings: KafkaSettings, producer: AIOKafkaProducer, unique: str
) -> None:
    topic = kafka_settings.topics.user_actions
    # One partition, so that the records keep their order (offsets 0-3 of partition 0).
    await ensure_topics(kafka_settings, topic, Topics.dlq(topic), partitions={topic: 1})
    values = [encode(_action(0)), b"{not json", encode(_action(2)), encode(_action(3))]
    await _produce(producer, topic, values)

    handler = Recorder(reject={"e3"})
    consumer = _consumer(kafka_settings, producer, handler, f"g{unique}")
    await consumer.start()
    await _run_until(consumer, lambda: len(handler.seen) >= 3)
    await consumer.stop()
    assert handler.seen == ["e0", "e2", "e3"]

    records = await _dlq_records(kafka_settings, topic, 2)
    by_offset = {dict(r.headers)[DlqHeader.OFFSET].decode(): r for r in records}
    assert set(by_offset) == {"1", "3"}
    garbage = dict(by_offset["1"].headers)
    assert by_offset["1"].value == b"{not json"
    assert garbage[DlqHeader.TOPIC].decode() == topic
    assert garbage[DlqHeader.PARTITION] == b"0"
    assert garbage[DlqHeader.ERROR_TYPE] == b"invalid"
    assert b"JSON" in garbage[DlqHeader.ERROR] or b"json" in garbage[DlqHeader.ERROR]
    assert dict(by_offset["3"].headers)[DlqHeader.ERROR] == b"rejected by handler"


async def test_next_version_events_with_an_extra_field_are_processed_not_dead_lettered(
    kafka_settings: KafkaSettings, producer: AIOKafkaProducer, unique: str
) -> None:
    """A producer one schema version ahead adds an optional field: the consumer reads it."""
    topic = kafka_settings.topics.user_actions
    await ensure_topics(kafka_settings, topic, Topics.dlq(topic), partitions={topic: 1})
    newer = [
        orjson.dumps({**orjson.loads(encode(_action(n))), "schema_version": 2, "channel": "app"})
        for n in range(3)
    ]
    too_new = orjson.dumps({**orjson.loads(encode(_action(3))), "schema_version": 3})
    await _produce(producer, topic, [*newer, too_new, encode(_action(4))])

    handler = Recorder()
    consumer = _consumer(kafka_settings, producer, handler, f"g{unique}")
    await consumer.start()
    await _run_until(consumer, lambda: len(handler.seen) >= 4)
    await consumer.stop()
    assert handler.seen == ["e0", "e1", "e2", "e4"]
    (dead,) = await _dlq_records(kafka_settings, topic, 1)
    assert dict(dead.headers)[DlqHeader.OFFSET] == b"3", "only the version two ahead"
    assert b"schema_version" in dict(dead.headers)[DlqHeader.ERROR]


async def test_an_unreachable_broker_fails_fast_naming_the_setting() -> None:
    from reco_common.kafka import KafkaUnavailableError, start_producer

    settings = KafkaSettings(bootstrap="127.0.0.1:1", request_timeout_s=2)
    with pytest.raises(KafkaUnavailableError, match="RECO_KAFKA_BOOTSTRAP"):
        await start_producer(settings)


def _sample(name: str, error_type: str) -> float:
    return REGISTRY.get_sample_value(name, {"error_type": error_type}) or 0.0


@pytest.mark.parametrize(
    ("dlq_max_bytes", "outcome"), [(2000, "cut"), (200, "parked")], ids=["cut", "parked"]
)
async def test_a_record_the_dlq_refuses_never_blocks_the_partition(
    kafka_settings: KafkaSettings,
    producer: AIOKafkaProducer,
    unique: str,
    dlq_max_bytes: int,
    outcome: str,
) -> None:
    topic = kafka_settings.topics.user_actions
    await ensure_topics(kafka_settings, topic, partitions={topic: 1})
    # A dead-letter topic that refuses the whole record (8 kB): the cut one (1 kB) fits in the
    # first case, nothing fits in the second.
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
    await admin.start()
    try:
        config = {"max.message.bytes": str(dlq_max_bytes)}
        await admin.create_topics([NewTopic(Topics.dlq(topic), 1, 1, topic_configs=config)])
    finally:
        await admin.close()
    huge = b"{" + b"x" * 8000
    values = [encode(_action(0)), huge, *(encode(_action(n)) for n in range(2, 10))]
    await _produce(producer, topic, values)
    parked = _sample("reco_test_dead_letters_parked_total", "invalid")

    handler = Recorder()
    group = f"g{unique}"
    consumer = _consumer(kafka_settings, producer, handler, group)
    await consumer.start()
    await _run_until(consumer, lambda: len(handler.seen) >= 9)
    await consumer.stop()
    assert handler.seen == [f"e{n}" for n in range(10) if n != 1]
    assert await _committed(kafka_settings, group) == len(values)
    if outcome == "cut":
        (record,) = await _dlq_records(kafka_settings, topic, 1)
        headers = dict(record.headers)
        assert record.value == huge[:1024]
        assert headers[DlqHeader.ORIGINAL_SIZE] == b"8001"
        assert (headers[DlqHeader.PARTITION], headers[DlqHeader.OFFSET]) == (b"0", b"1")
    else:
        assert _sample("reco_test_dead_letters_parked_total", "invalid") == parked + 1
