from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer
from trainer_stack import produce

from reco_common.contracts import ActionType, ArchivedOffsets, ObjectLayout, UserAction, decode
from reco_common.interactions import read_interactions
from reco_common.settings import KafkaSettings, S3Settings
from reco_common.storage import ObjectStore
from reco_trainer.snapshot import archive_location, archive_topic

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _actions(first: int, count: int) -> list[UserAction]:
    return [
        UserAction(
            event_id=f"e{n}",
            user_id=f"u{n % 7}",
            item_id=f"i{n % 11}",
            action=list(ActionType)[n % 4],
            ts=T0 + timedelta(seconds=n),
        )
        for n in range(first, first + count)
    ]


async def test_snapshots_are_bounded_archived_and_resume_where_they_stopped(
    kafka_settings: KafkaSettings,
    producer: AIOKafkaProducer,
    s3_store: ObjectStore,
    s3_settings: S3Settings,
) -> None:
    topic = kafka_settings.topics.user_actions
    await produce(producer, kafka_settings, _actions(0, 120))
    await producer.send_and_wait(topic, b'{"not": "an action"}', key=b"u0")

    first = await archive_topic(kafka=kafka_settings, store=s3_store, group="trainer", timeout_s=60)
    assert first.records == 120
    assert first.rejected == 1
    assert sum(first.offsets.values()) == 121
    assert first.archived_uri is not None
    assert first.archived_uri.startswith(s3_store.uri(ObjectLayout.snapshot_dir(topic, "")))
    recorded = decode(
        ArchivedOffsets, s3_store.get_bytes(ObjectLayout.snapshot_offsets(topic, "trainer"))
    )
    assert recorded.offsets == first.offsets
    archived = read_interactions(first.archived_uri, s3=s3_settings)
    assert sorted(archived.table.column("event_id").to_pylist()) == sorted(
        f"e{n}" for n in range(120)
    )

    again = await archive_topic(kafka=kafka_settings, store=s3_store, group="trainer", timeout_s=60)
    assert again.archived_uri is None
    assert again.offsets == first.offsets

    await produce(producer, kafka_settings, _actions(120, 30))
    third = await archive_topic(kafka=kafka_settings, store=s3_store, group="trainer", timeout_s=60)
    assert third.records == 30
    assert third.archived_uri not in (None, first.archived_uri)
    everything = read_interactions(archive_location(s3_store, topic), s3=s3_settings)
    ids = everything.table.column("event_id").to_pylist()
    assert sorted(ids) == sorted(f"e{n}" for n in range(150))
    assert len(everything.sources) == 2
    assert third.data_offsets() == {f"{topic}:{p}": o for p, o in sorted(third.offsets.items())}


async def test_a_missing_topic_archives_nothing(
    kafka_settings: KafkaSettings, s3_store: ObjectStore
) -> None:
    snapshot = await archive_topic(
        kafka=kafka_settings, store=s3_store, group="trainer", timeout_s=30
    )
    assert snapshot.archived_uri is None
    assert snapshot.offsets == {}
    assert s3_store.list() == []
