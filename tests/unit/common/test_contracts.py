from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reco_common.contracts import (
    ActionType,
    ContractError,
    EvalMetrics,
    ModelPublished,
    RedisKeys,
    Topics,
    UserAction,
    decode,
    encode,
)


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
    event = UserAction.model_validate(_action(weight=2.5))
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
        ({"action": "teleport"}, "action"),
        ({"weight": -1}, "weight"),
        ({"ts": "2026-01-31T12:00:00"}, "ts"),
        ({"schema_version": 2}, "schema_version"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_actions_name_the_field(overrides: dict[str, object], field: str) -> None:
    import orjson

    with pytest.raises(ContractError) as caught:
        decode(UserAction, orjson.dumps(_action(**overrides)))
    assert caught.value.reason.startswith(field)


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
        "metrics": EvalMetrics(model={"precision@10": 0.1}, baseline={}).model_dump(),
    }
    with pytest.raises(ContractError, match="model_name"):
        decode(ModelPublished, encode_raw(payload))


def encode_raw(payload: dict[str, object]) -> bytes:
    import orjson

    return orjson.dumps(payload)


def test_names_come_from_the_contract_with_an_isolating_prefix() -> None:
    topics = Topics("t1-")
    assert topics.user_actions == "t1-user-actions"
    assert Topics.dlq(topics.user_actions) == "t1-user-actions.dlq"
    keys = RedisKeys("p")
    assert keys.recommendations("m", "u") == "p:rec:m:u"
    assert keys.active_model("m") == "p:active:m"
    assert keys.history("u") == "p:hist:u"
