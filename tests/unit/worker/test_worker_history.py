"""The timestamp rule, and coalescing a batch per user."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiokafka import ConsumerRecord

from reco_common.contracts import ActionType, UserAction, encode
from reco_common.kafka import Delivery
from reco_common.redis_store import Position
from reco_worker.consumer import coalesce
from reco_worker.history import effective_ts

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def action(
    n: int, *, user: str = "u1", ts: datetime = NOW, weight: float | None = None
) -> UserAction:
    return UserAction(
        event_id=f"e{n}",
        user_id=user,
        item_id=f"i{n}",
        action=ActionType.CLICK,
        weight=weight,
        ts=ts,
    )


def delivery(
    event: UserAction, *, offset: int, key: bytes | None = None, record_ts: datetime = NOW
) -> Delivery[UserAction]:
    value = encode(event)
    record = ConsumerRecord(
        topic="user-actions",
        partition=0,
        offset=offset,
        timestamp=int(record_ts.timestamp() * 1000),
        timestamp_type=0,
        key=event.user_id.encode() if key is None else key,
        value=value,
        checksum=None,
        serialized_key_size=len(event.user_id),
        serialized_value_size=len(value),
        headers=(),
    )
    return Delivery(record, event)


def test_a_future_timestamp_is_clamped_to_the_record_time() -> None:
    record_ms = int(NOW.timestamp() * 1000)
    future = action(1, ts=NOW + timedelta(days=3))
    assert (
        effective_ts(future, record_ts_ms=record_ms, max_future_skew_s=300) == NOW.timestamp() + 300
    )
    slightly = action(2, ts=NOW + timedelta(seconds=30))
    assert (
        effective_ts(slightly, record_ts_ms=record_ms, max_future_skew_s=300)
        == slightly.ts.timestamp()
    )


def test_an_old_timestamp_is_kept() -> None:
    old = action(1, ts=datetime(1999, 1, 1, tzinfo=UTC))
    record_ms = int(NOW.timestamp() * 1000)
    assert effective_ts(old, record_ts_ms=record_ms, max_future_skew_s=300) == old.ts.timestamp()


def test_without_a_record_timestamp_the_event_time_stands() -> None:
    future = action(1, ts=NOW + timedelta(days=3))
    assert effective_ts(future, record_ts_ms=-1, max_future_skew_s=0) == future.ts.timestamp()


def test_a_batch_coalesces_per_user_keeping_the_newest_event() -> None:
    events = [action(1, user="a"), action(2, user="b"), action(3, user="a"), action(4, user="a")]
    batch = coalesce([delivery(e, offset=n) for n, e in enumerate(events)], max_future_skew_s=300)
    assert list(batch.updates) == ["a", "b"]
    assert batch.updates["a"].last.event_id == "e4"
    assert batch.updates["a"].items == ["i1", "i3", "i4"]
    assert len(batch.updates["a"].members) == 3
    assert batch.updates["b"].last.event_id == "e2"
    assert batch.rejections == []
    # Each user's writes are fenced by the log position of their newest event.
    assert batch.updates["a"].position == Position(partition=0, offset=3)
    assert batch.updates["b"].position == Position(partition=0, offset=1)


def test_a_redelivered_event_in_the_same_batch_adds_one_member() -> None:
    same = action(1)
    batch = coalesce([delivery(same, offset=0), delivery(same, offset=1)], max_future_skew_s=300)
    assert len(batch.updates["u1"].members) == 1


def test_records_not_keyed_by_their_user_are_rejected() -> None:
    good = delivery(action(1, user="a"), offset=0)
    wrong = delivery(action(2, user="a"), offset=1, key=b"b")
    batch = coalesce([good, wrong], max_future_skew_s=300)
    assert [r.record.offset for r in batch.rejections] == [1]
    assert "keyed by user id" in batch.rejections[0].reason
    assert batch.updates["a"].items == ["i1"]


def test_clamped_timestamps_are_counted() -> None:
    future = action(1, ts=NOW + timedelta(hours=1))
    batch = coalesce([delivery(future, offset=0)], max_future_skew_s=60)
    assert batch.clamped == 1
    assert batch.updates["u1"].event_times == [NOW.timestamp() + 60]
