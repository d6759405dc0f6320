from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import orjson
import pytest

from reco_common.contracts import (
    PLAIN_IDS,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    SERVED_LIST_MAGIC,
    ActionType,
    ArchivedOffsets,
    ContractError,
    EvalMetrics,
    ModelPublished,
    ObjectLayout,
    RecommendationList,
    RedisKeys,
    ServedList,
    SnapshotRange,
    Topics,
    UserAction,
    decode,
    decode_history_member,
    decode_many,
    decode_recommendations,
    encode,
    encode_history_member,
    encode_recommendations,
)

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def _action(**overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "event_id": "e-1",
        "user_id": "u-1",
        "item_id": "i-1",
        "action": "click",
        "ts": "2026-01-31T12:00:00Z",
    }
    payload.update(overrides)
    return payload


def test_user_action_round_trips_through_the_one_serializer() -> None:
    event = decode(UserAction, orjson.dumps(_action(weight=2.5)))
    again = decode(UserAction, encode(event))
    assert again == event
    assert again.action is ActionType.CLICK
    assert again.ts == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert again.schema_version == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"item_id": "has space"}, "item_id"),
        # Python's ``$`` matches before a final newline: the rule must not let that one through
        # (a member's newline broke the history scripts' framing of a whole batch).
        ({"item_id": "i-1\n"}, "item_id"),
        ({"user_id": "u-1\n"}, "user_id"),
        ({"event_id": "e-1\n"}, "event_id"),
        ({"action": "teleport"}, "action"),
        ({"weight": -1}, "weight"),
        ({"ts": "2026-01-31T12:00:00"}, "ts"),
        ({"schema_version": 0}, "schema_version"),
        ({"schema_version": 3}, "schema_version"),  # two ahead: this reader is too old
        ({"schema_version": "2"}, "schema_version"),
    ],
)
def test_invalid_actions_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ContractError) as caught:
        decode(UserAction, orjson.dumps(_action(**overrides)))
    assert caught.value.reason.startswith(field)


def test_decoding_many_accepts_and_refuses_exactly_what_decoding_each_does() -> None:
    """The batch decoder checks identifiers for the whole batch at once: every payload gets
    the value or the error that ``decode`` gives it, white space of any kind included."""
    payloads: list[bytes | None] = [orjson.dumps(_action(event_id=f"e-{n}")) for n in range(5)]
    for field in ("event_id", "user_id", "item_id"):
        for bad in ("a b", "a\n", "\ta", "a\u00a0b", "a\u2028", "", "x" * 257):
            payloads.append(orjson.dumps(_action(**{field: bad})))
    payloads += [
        orjson.dumps(_action(event_id="e 1", action="teleport")),  # two errors: the first named
        orjson.dumps(_action(weight=2.5, ts="2026-01-31T13:00:00+01:00", extra="ignored")),
        orjson.dumps(_action(item_id="\u00e9\u00e8\x00")),  # not white space: accepted
        b"{not json",
        b"[1]",
        None,
    ]
    for payload, many in zip(payloads, decode_many(UserAction, payloads), strict=True):
        try:
            each: UserAction | ContractError = decode(UserAction, payload)
        except ContractError as exc:
            each = exc
        if isinstance(each, ContractError):
            assert isinstance(many, ContractError), payload
            assert many.reason == each.reason
        else:
            assert isinstance(many, UserAction), payload
            assert msgspec.structs.astuple(many) == msgspec.structs.astuple(each)
            assert encode(many) == encode(each)


def test_the_next_schema_version_with_an_extra_field_is_read() -> None:
    """Version N+1 only adds optional fields: a consumer of N reads it and ignores the rest."""
    assert range(1, SCHEMA_VERSION + 2) == READABLE_SCHEMA_VERSIONS
    newer = decode(UserAction, orjson.dumps(_action(schema_version=2, surprise={"x": 1})))
    assert newer.schema_version == 2
    assert newer == decode(UserAction, orjson.dumps(_action(schema_version=2)))


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", None])
def test_garbage_is_a_contract_error_not_a_crash(raw: bytes | None) -> None:
    with pytest.raises(ContractError):
        decode(UserAction, raw)


def test_model_published_rejects_bad_model_names() -> None:
    payload = {
        "model_name": "Bad_Name",
        "version": "v1",
        "artifact_uri": "s3://reco/models/x/v1",
        "created_at": "2026-01-31T12:00:00Z",
        "metrics": {"model": {"precision@10": 0.1}, "baseline": {}},
    }
    with pytest.raises(ContractError, match="model_name"):
        decode(ModelPublished, orjson.dumps(payload))
    for field, bad in (("model_name", "good-name\n"), ("manifest_sha256", "0" * 64 + "\n")):
        with pytest.raises(ContractError, match=field):
            decode(ModelPublished, orjson.dumps({**payload, "model_name": "m", field: bad}))


def test_names_come_from_the_contract_with_an_isolating_prefix() -> None:
    topics = Topics("t1-")
    assert topics.user_actions == "t1-user-actions"
    assert Topics.dlq(topics.user_actions) == "t1-user-actions.dlq"
    keys = RedisKeys("p")
    assert keys.recommendations("m", "u") == "p:{u:u}:rec:m"
    assert keys.active_model("m") == "p:{m:m}:active"
    assert keys.history("u") == "p:{u:u}:hist"


def test_event_times_are_kept_in_utc_and_must_be_aware() -> None:
    event = decode(UserAction, orjson.dumps(_action(ts="2026-01-31T14:00:00+02:00")))
    assert event.ts.tzinfo is UTC
    assert event.ts == datetime(2026, 1, 31, 12, tzinfo=UTC)
    local = datetime(2026, 1, 31, 14, tzinfo=timezone(timedelta(hours=2)))
    assert _built(ts=local).ts.tzinfo is UTC
    with pytest.raises(ValueError, match="timezone"):
        _built(ts=datetime(2026, 1, 31, 12))


def test_numpy_metrics_encode_as_plain_numbers() -> None:
    import numpy as np

    metrics = EvalMetrics(model={"precision@10": np.float32(0.25)}, baseline={})  # type: ignore[dict-item]
    assert decode(EvalMetrics, encode(metrics)).model == {"precision@10": 0.25}


def _built(*, ts: datetime, weight: float | None = None, n: int = 1) -> UserAction:
    return UserAction(
        event_id=f"e{n}",
        user_id="u1",
        item_id=f"i{n}",
        action=ActionType.CLICK,
        weight=weight,
        ts=ts,
    )


@pytest.mark.parametrize("weight", [None, 2.5, 1e6, 0.001])
def test_a_member_round_trips(weight: float | None) -> None:
    event = _built(ts=NOW, weight=weight, n=7)
    entry = decode_history_member(encode_history_member(event), 123.5)
    assert (entry.event_id, entry.item_id, entry.action, entry.weight, entry.ts) == (
        "e7",
        "i7",
        ActionType.CLICK,
        weight,
        123.5,
    )


def test_the_same_event_always_encodes_to_the_same_member() -> None:
    assert encode_history_member(_built(ts=NOW, n=1)) == encode_history_member(_built(ts=NOW, n=1))
    assert encode_history_member(_built(ts=NOW, n=1)) != encode_history_member(_built(ts=NOW, n=2))


@pytest.mark.parametrize("member", [b"", b"2\te\ti\tview\t", b"1\te\ti\tview", b"1\te\ti\tjump\t"])
def test_a_foreign_member_is_refused(member: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message depends on what is wrong
        decode_history_member(member, 0.0)


def test_each_topic_is_created_with_the_partition_count_of_the_contract() -> None:
    topics = Topics("t1-")
    assert topics.partitions(topics.user_actions) == 24
    assert topics.partitions(topics.model_published) == 1
    assert topics.partitions(topics.rollout_events) == 1
    assert topics.partitions(Topics.dlq(topics.user_actions)) == 1
    for foreign in ("t1-clicks", "user-actions"):  # not ours, or not under this prefix
        with pytest.raises(ValueError, match="not a topic of the contract"):
            topics.partitions(foreign)


def test_object_names_come_from_the_layout() -> None:
    assert ObjectLayout.report("shop", "v1", ObjectLayout.REPORT_JSON) == (
        "models/shop/v1/evaluation.json"
    )
    actions = ObjectLayout.snapshot_file("ua", "s1", ObjectLayout.SNAPSHOT_ACTIONS)
    assert actions == "snapshots/ua/s1/actions.parquet"
    assert ObjectLayout.snapshot_file("ua", "s1", ObjectLayout.SNAPSHOT_RANGE) == (
        "snapshots/ua/s1/_range.json"
    )


def test_the_snapshot_files_keep_their_json_shape() -> None:
    offsets = ArchivedOffsets(topic="ua", offsets={0: 12, 2: 7})
    assert encode(offsets) == b'{"topic":"ua","offsets":{"0":12,"2":7}}'
    assert decode(ArchivedOffsets, encode(offsets)) == offsets
    held = SnapshotRange(topic="ua", offsets={0: (3, 12)}, events=9, rejected=0)
    assert orjson.loads(encode(held))["offsets"] == {"0": [3, 12]}
    assert decode(SnapshotRange, encode(held)) == held


# --------------------------------------------------------------------------- served lists

PLAIN = ["i1", "i-2", "é", "x,y", "7"]
ESCAPED = ['a"b', "c\\d", "é", 'q","score":1', "z"]


def _stored(items: list[str]) -> RecommendationList:
    return RecommendationList(
        model_version="v3",
        computed_at=NOW,
        event_id="e-9",
        event_ts=NOW,
        items=items,
        scores=[float(len(items) - k) / 3 for k in range(len(items))],
    )


@pytest.mark.parametrize("items", [[], ["a"], PLAIN, ESCAPED], ids=["empty", "one", "plain", "esc"])
def test_a_served_list_decodes_to_what_was_encoded(items: list[str]) -> None:
    value = _stored(items)
    raw = encode_recommendations(value)
    assert raw.startswith(SERVED_LIST_MAGIC)
    assert decode_recommendations(raw) == value
    assert decode_recommendations(encode(value)) == value  # format 1 is still read
    parsed = ServedList.parse(raw)
    assert orjson.loads(b"{" + parsed.head + b"}") == {
        "model_version": "v3",
        "computed_at": "2026-11-23T08:00:00Z",
    }
    assert bool(parsed.flags & PLAIN_IDS) == (items is not ESCAPED)


@pytest.mark.parametrize("items", [PLAIN, ESCAPED], ids=["plain", "escaped"])
@pytest.mark.parametrize("offset", [0, 1, 4, 5, 9])
@pytest.mark.parametrize("n", [1, 2, 5, 100])
@pytest.mark.parametrize("exclude", [(), ("x,y",), ('a"b', "i1", "nope")])
def test_a_served_list_selects_like_decoding_and_slicing(
    items: list[str], offset: int, n: int, exclude: tuple[str, ...]
) -> None:
    value = _stored(items)
    kept = [
        {"item_id": item, "score": score}
        for item, score in zip(value.items, value.scores, strict=True)
        if item not in exclude
    ]
    parsed = ServedList.parse(encode_recommendations(value))
    selected = parsed.select(exclude=frozenset(exclude), offset=offset, n=n)
    assert orjson.loads(selected) == kept[offset : offset + n]


@pytest.mark.parametrize(
    "raw",
    [
        b"\xffRL2",  # header cut short
        b"\xffRL3" + bytes(20),  # another format
        encode_recommendations(_stored(PLAIN))[:-9],  # value cut short
    ],
)
def test_a_damaged_served_list_is_a_contract_error(raw: bytes) -> None:
    with pytest.raises(ContractError):
        ServedList.parse(raw).select(exclude=frozenset(), offset=0, n=100)


def test_a_served_list_that_lies_about_its_count_is_a_contract_error() -> None:
    raw = bytearray(encode_recommendations(_stored(PLAIN)))
    raw[8:12] = (50).to_bytes(4, "little")  # the count says 50, the arrays hold 5
    with pytest.raises(ContractError):
        ServedList.parse(bytes(raw)).select(exclude=frozenset(), offset=0, n=100)
