"""The topic archive: what a snapshot of ``user-actions`` holds, written by the trainer and read
back by a worker's rebuild.

A snapshot (:meth:`ObjectLayout.snapshot_dir`) is one Parquet file of the archived actions
(:attr:`ObjectLayout.SNAPSHOT_ACTIONS`: the columns of
:func:`reco_common.interactions.actions_table`, what training reads, which ignores the rest)
plus each record's coordinates in the topic — ``partition``, ``offset``, the broker's
``record_ts_ms`` and the record's ``record_key`` — so that a rebuild applies them exactly as the
live worker did (fence positions, the clamp of future timestamps, the key check), and
:attr:`ObjectLayout.SNAPSHOT_RANGE` (:class:`SnapshotRange`, the offsets it covers).
Snapshots written before the coordinates existed cannot be replayed: :func:`read_snapshot`
refuses them (:class:`ArchiveError`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reco_common.contracts import ActionType, ObjectLayout, SnapshotRange, UserAction, decode
from reco_common.interactions import (
    ACTION,
    EVENT_ID,
    ITEM_ID,
    TS,
    USER_ID,
    WEIGHT,
    actions_table,
)
from reco_common.storage import ObjectStore

PARTITION: Final = "partition"
OFFSET: Final = "offset"
RECORD_TS_MS: Final = "record_ts_ms"
RECORD_KEY: Final = "record_key"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ArchiveError(RuntimeError):
    """A snapshot that cannot be replayed (no record coordinates, unreadable)."""


@dataclass(frozen=True, slots=True)
class ArchivedRecord:
    """One archived action and where its record was in the topic."""

    action: UserAction
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None


def archive_table(records: Sequence[ArchivedRecord]) -> pa.Table:
    """The Parquet table of a snapshot: the actions' columns, then the coordinates."""
    table = actions_table(r.action for r in records)
    coordinates = {
        PARTITION: pa.array([r.partition for r in records], pa.int32()),
        OFFSET: pa.array([r.offset for r in records], pa.int64()),
        RECORD_TS_MS: pa.array([r.timestamp_ms for r in records], pa.int64()),
        RECORD_KEY: pa.array([r.key for r in records], pa.binary()),
    }
    for name, column in coordinates.items():
        table = table.append_column(name, column)
    return table


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot of the archive and the offsets it covers."""

    snapshot_id: str
    held: SnapshotRange


def list_snapshots(store: ObjectStore, topic: str) -> list[Snapshot]:
    """Every snapshot of ``topic`` in ``store``, by its start offsets."""
    root = ObjectLayout.snapshot_dir(topic, "").rstrip("/")
    found = []
    for key in store.list(root):
        parts = key.removeprefix(root + "/").split("/")
        if len(parts) == 2 and parts[1] == ObjectLayout.SNAPSHOT_RANGE:
            held = decode(SnapshotRange, store.get_bytes(key))
            found.append(Snapshot(parts[0], held))
    return sorted(found, key=lambda s: sorted((p, r[0]) for p, r in s.held.offsets.items()))


def read_snapshot(store: ObjectStore, topic: str, snapshot_id: str) -> Iterator[ArchivedRecord]:
    """The snapshot's records, in the order archived (per partition, by offset)."""
    key = ObjectLayout.snapshot_file(topic, snapshot_id, ObjectLayout.SNAPSHOT_ACTIONS)
    table = pq.read_table(pa.BufferReader(store.get_bytes(key)))
    missing = {PARTITION, OFFSET, RECORD_TS_MS, RECORD_KEY} - set(table.column_names)
    if missing:
        raise ArchiveError(
            f"{store.uri(key)} has no record coordinates ({', '.join(sorted(missing))}): "
            "archived before snapshots kept them, it cannot be replayed"
        )
    micros = pc.cast(table.column(TS), pa.int64()).to_pylist()
    columns = [
        table.column(name).to_pylist()
        for name in (EVENT_ID, USER_ID, ITEM_ID, ACTION, WEIGHT, PARTITION, OFFSET)
    ]
    record_ts, keys = table.column(RECORD_TS_MS).to_pylist(), table.column(RECORD_KEY).to_pylist()
    for row, (event_id, user_id, item_id, action, weight, partition, offset) in enumerate(
        zip(*columns, strict=True)
    ):
        event = UserAction(
            event_id=event_id,
            user_id=user_id,
            item_id=item_id,
            action=ActionType(action),
            weight=weight,
            ts=_EPOCH + timedelta(microseconds=micros[row]),
        )
        yield ArchivedRecord(event, partition, offset, record_ts[row], keys[row])
