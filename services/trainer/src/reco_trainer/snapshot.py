"""Archiving ``user-actions`` to object storage as bounded snapshots: the training data of record.

Each run reads every partition from where the previous run stopped (recorded at
``ObjectLayout.snapshot_offsets``) up to the end offsets taken at start, writes the events as
one Parquet file under ``ObjectLayout.snapshot_dir`` (with each record's coordinates, so that a
worker can rebuild from it: ``reco_common.archive``), checks it by reading its checksum back,
and only then moves the recorded offsets. The snapshot id is derived from the start offsets:
a run that died before recording its offsets is redone into the same object, never duplicated.
Kafka retention can then expire without losing training data.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import UnknownTopicOrPartitionError

from reco_common.archive import ArchivedRecord, archive_table
from reco_common.contracts import (
    ArchivedOffsets,
    ContractError,
    ObjectLayout,
    SnapshotRange,
    UserAction,
    decode,
    encode,
)
from reco_common.interactions import LogFormat, encode_log
from reco_common.kafka import admin_client, start_client
from reco_common.settings import KafkaSettings
from reco_common.storage import ObjectNotFoundError, ObjectStore

logger = logging.getLogger(__name__)

_FETCH_RECORDS = 10_000


class SnapshotError(RuntimeError):
    """The topic could not be archived (timeout, or the checksum read back differs)."""


@dataclass(frozen=True, slots=True)
class TopicSnapshot:
    """Where the archive of ``topic`` stands after this run."""

    topic: str
    offsets: dict[int, int]
    archived_uri: str | None = None
    records: int = 0
    rejected: int = 0
    lost: dict[int, int] = field(default_factory=dict)

    def data_offsets(self) -> dict[str, int]:
        """``{"<topic>:<partition>": next offset}`` for the manifest."""
        return {f"{self.topic}:{p}": o for p, o in sorted(self.offsets.items())}


@dataclass(slots=True)
class _Range:
    start: dict[TopicPartition, int]
    end: dict[TopicPartition, int]
    lost: dict[int, int]

    @property
    def empty(self) -> bool:
        return all(self.start[tp] >= self.end[tp] for tp in self.end)


async def archive_topic(
    *, kafka: KafkaSettings, store: ObjectStore, group: str, timeout_s: float
) -> TopicSnapshot:
    """Archive what ``user-actions`` gained since the last run (bounded by the end at start)."""
    topic = kafka.topics.user_actions
    previous = _load_offsets(store, topic, group)
    partitions = await _partitions(kafka, topic)
    if not partitions:
        logger.warning("topic %s does not exist: nothing to archive", topic)
        return TopicSnapshot(topic=topic, offsets=previous)
    consumer = AIOKafkaConsumer(
        **kafka.client_options(),
        client_id=f"{kafka.client_id}-trainer-snapshot",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=int(kafka.request_timeout_s * 1000) + 30_000,
    )
    await start_client(kafka, start=consumer.start, close=consumer.stop)
    try:
        bounds = await _range(consumer, topic, partitions, previous)
        if bounds.empty:
            logger.info("topic %s: nothing new since offsets %s", topic, previous)
            return TopicSnapshot(topic=topic, offsets=previous, lost=bounds.lost)
        actions, rejected = await _read(consumer, bounds, deadline=time.monotonic() + timeout_s)
    finally:
        await consumer.stop()
    uri = _write(store, topic, bounds, actions, rejected) if actions else None
    offsets = {tp.partition: end for tp, end in bounds.end.items()}
    _store_offsets(store, topic, group, offsets)
    logger.info(
        "archived %s: %d events (%d rejected) up to offsets %s",
        topic,
        len(actions),
        rejected,
        offsets,
    )
    return TopicSnapshot(
        topic=topic,
        offsets=offsets,
        archived_uri=uri,
        records=len(actions),
        rejected=rejected,
        lost=bounds.lost,
    )


async def _partitions(kafka: KafkaSettings, topic: str) -> list[int]:
    """The topic's partitions, ``[]`` when it does not exist (never created as a side effect)."""
    async with admin_client(kafka) as admin:
        (described,) = await admin.describe_topics([topic])
    if described["error_code"] == UnknownTopicOrPartitionError.errno:
        return []
    if described["error_code"]:
        raise SnapshotError(
            f"{topic}: describing the topic failed (error {described['error_code']})"
        )
    return sorted(p["partition"] for p in described["partitions"])


async def _range(
    consumer: AIOKafkaConsumer, topic: str, partitions: list[int], previous: dict[int, int]
) -> _Range:
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    begin = await consumer.beginning_offsets(tps)
    end = await consumer.end_offsets(tps)
    start: dict[TopicPartition, int] = {}
    lost: dict[int, int] = {}
    for tp in tps:
        offset = previous.get(tp.partition, begin[tp])
        if offset > end[tp]:
            logger.warning(
                "%s: recorded offset %d is past the end %d (topic recreated?): re-reading it",
                tp,
                offset,
                end[tp],
            )
            offset = begin[tp]
        if offset < begin[tp]:
            lost[tp.partition] = begin[tp] - offset
            logger.error(
                "%s: %d events expired before they were archived (offsets %d..%d)",
                tp,
                begin[tp] - offset,
                offset,
                begin[tp],
            )
            offset = begin[tp]
        start[tp] = offset
    return _Range(start=start, end=end, lost=lost)


async def _read(
    consumer: AIOKafkaConsumer, bounds: _Range, *, deadline: float
) -> tuple[list[ArchivedRecord], int]:
    pending = {tp for tp in bounds.end if bounds.start[tp] < bounds.end[tp]}
    for tp in pending:
        consumer.seek(tp, bounds.start[tp])
    consumer.pause(*(set(bounds.end) - pending))
    actions: list[ArchivedRecord] = []
    rejected = 0
    while pending:
        if time.monotonic() > deadline:
            raise SnapshotError(
                f"archiving {sorted(str(tp) for tp in pending)} did not finish in time "
                "(RECO_TRAINER_SNAPSHOT_TIMEOUT_S)"
            )
        batches = await consumer.getmany(*pending, timeout_ms=500, max_records=_FETCH_RECORDS)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= bounds.end[tp]:
                    continue
                try:
                    action = decode(UserAction, record.value)
                except ContractError as exc:
                    rejected += 1
                    logger.warning("%s@%d skipped: %s", tp, record.offset, exc.reason)
                    continue
                actions.append(
                    ArchivedRecord(
                        action, record.partition, record.offset, record.timestamp, record.key
                    )
                )
        for tp in list(pending):
            if await consumer.position(tp) >= bounds.end[tp]:
                pending.discard(tp)
                consumer.pause(tp)
    return actions, rejected


def snapshot_id(start: dict[int, int]) -> str:
    """``<sum of start offsets, 12 digits>-<hash of the start offsets>``: sortable, stable."""
    text = ",".join(f"{p}:{o}" for p, o in sorted(start.items()))
    return f"{sum(start.values()):012d}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _write(
    store: ObjectStore, topic: str, bounds: _Range, actions: list[ArchivedRecord], rejected: int
) -> str:
    ident = snapshot_id({tp.partition: o for tp, o in bounds.start.items()})
    key = ObjectLayout.snapshot_file(topic, ident, ObjectLayout.SNAPSHOT_ACTIONS)
    data = encode_log(archive_table(actions), LogFormat.PARQUET)
    store.put_bytes(key, data)
    if store.sha256(key) != hashlib.sha256(data).hexdigest():
        raise SnapshotError(f"{store.uri(key)}: checksum differs after upload")
    ranges = {tp.partition: (bounds.start[tp], bounds.end[tp]) for tp in sorted(bounds.end)}
    held = SnapshotRange(topic=topic, offsets=ranges, events=len(actions), rejected=rejected)
    store.put_bytes(
        ObjectLayout.snapshot_file(topic, ident, ObjectLayout.SNAPSHOT_RANGE), encode(held)
    )
    return store.uri(key)


def _load_offsets(store: ObjectStore, topic: str, group: str) -> dict[int, int]:
    try:
        raw = store.get_bytes(ObjectLayout.snapshot_offsets(topic, group))
    except ObjectNotFoundError:
        return {}
    return decode(ArchivedOffsets, raw).offsets


def _store_offsets(store: ObjectStore, topic: str, group: str, offsets: dict[int, int]) -> None:
    doc = ArchivedOffsets(topic=topic, offsets=dict(sorted(offsets.items())))
    store.put_bytes(ObjectLayout.snapshot_offsets(topic, group), encode(doc))


def archive_location(store: ObjectStore, topic: str) -> str:
    """The URI below which every snapshot of ``topic`` lies (what training reads)."""
    return store.uri(ObjectLayout.snapshot_dir(topic, "")).rstrip("/")
