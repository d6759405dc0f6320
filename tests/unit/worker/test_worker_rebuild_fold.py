"""Which users a rebuild's fold hands to the writer, and when (``LogFold.take``)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import ConsumerRecord

from reco_common.contracts import ActionType, UserAction, encode
from reco_worker.rebuild import SWITCH_INTERVAL_S, LogFold, _switch_interval

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def action(n: int, user: str) -> UserAction:
    return UserAction(
        event_id=f"e{n}", user_id=user, item_id=f"i{n}", action=ActionType.VIEW, ts=T0
    )


def record(n: int, user: str, partition: int) -> ConsumerRecord[bytes, bytes]:
    value = encode(action(n, user))
    return ConsumerRecord(
        topic="user-actions",
        partition=partition,
        offset=n,
        timestamp=int((T0 + timedelta(hours=1)).timestamp() * 1000),
        timestamp_type=0,
        key=user.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(user),
        serialized_value_size=len(value),
        headers=(),
    )


def test_a_partition_read_to_its_end_hands_over_its_users_once() -> None:
    fold = LogFold(max_len=10, max_future_skew_s=60)
    fold.add_records([record(0, "a", 0), record(1, "c", 0), record(2, "a", 0)])
    assert fold.take({0}) == ["a", "c"]
    assert fold.take({0}) == []
    fold.add_records([record(3, "b", 1), record(4, "c", 1)])  # c on a second partition
    assert fold.take({0, 1}) == ["b", "c"]
    assert fold.addition("c").position.partition == 1
    assert len(fold.addition("c").members) == 2  # whole: both partitions' events
    assert fold.take() == []


def test_a_user_whose_newest_event_is_on_an_unread_partition_waits() -> None:
    fold = LogFold(max_len=10, max_future_skew_s=60)
    fold.add(action(0, "archived"), 2, 7, T0.timestamp())  # from the archive, partition 2
    fold.add_records([record(0, "a", 0)])
    assert fold.take({0}) == ["a"]
    assert fold.take({0, 1}) == []
    assert fold.take() == ["archived"]


def test_write_all_takes_every_user_not_yet_taken() -> None:
    fold = LogFold(max_len=10, max_future_skew_s=60, users=["b"])
    fold.add_records([record(0, "a", 0), record(1, "b", 0)])
    assert fold.take() == ["b"]


def test_the_switch_interval_is_restored_after_a_rebuild() -> None:
    before, during = sys.getswitchinterval(), []

    def failed_rebuild() -> None:
        with _switch_interval(SWITCH_INTERVAL_S):
            during.append(sys.getswitchinterval())
            raise RuntimeError("a failed rebuild")

    with pytest.raises(RuntimeError):
        failed_rebuild()
    assert during == [pytest.approx(SWITCH_INTERVAL_S)]
    assert sys.getswitchinterval() == before
