"""The key layout on a Redis Cluster: the keys of one request or one script share a slot."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reco_common.contracts import RedisKeys
from reco_common.pipelined_cluster import slot_of
from reco_common.settings import RedisSettings

# Identifiers are any non-blank strings: braces anywhere must not split a user's keys.
USERS = ["u1", "user-42", "}", "}x", "{", "a{b}c", "{}", "x}y{z", "ü-ß", "u:1", "m:default"]
MODELS = ["default", "m-2"]


def _user_keys(keys: RedisKeys, user_id: str) -> list[str]:
    return [
        keys.user_fence(user_id),
        keys.history(user_id),
        *(keys.recommendations(model, user_id) for model in MODELS),
    ]


@pytest.mark.parametrize("user_id", USERS)
def test_a_users_keys_share_one_slot(user_id: str) -> None:
    keys = RedisKeys("t1")
    assert len({slot_of(key) for key in _user_keys(keys, user_id)}) == 1


@pytest.mark.parametrize("model", MODELS)
def test_a_models_records_share_one_slot(model: str) -> None:
    keys = RedisKeys("t1")
    records = [
        keys.active_fence(model),
        keys.active_model(model),
        keys.popular(model, "v1"),
        keys.popular(model, "v2"),
        keys.rollout(model),
    ]
    assert len({slot_of(key) for key in records}) == 1


def test_users_spread_over_the_slots_and_prefixes_stay_apart() -> None:
    keys = RedisKeys("t1")
    slots = {slot_of(keys.history(f"u{n}")) for n in range(1000)}
    assert len(slots) > 900  # 1000 users over 16384 slots: a few collisions at most
    assert keys.history("u1") != RedisKeys("t2").history("u1")
    assert keys.history("m:x") != keys.active_model("x")  # the tags' namespaces keep them apart


def test_the_fence_fields_name_partition_and_model() -> None:
    assert RedisKeys.history_fence_field(3) == "h:3"
    assert RedisKeys.lists_fence_field(3, "default") == "l:default:3"


def test_a_cluster_url_names_its_nodes() -> None:
    settings = RedisSettings(url="redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert settings.cluster
    assert settings.node_urls() == ["redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7001"]
    single = RedisSettings(url="rediss://127.0.0.1:6380/0")
    assert not single.cluster
    assert single.node_urls() == ["rediss://127.0.0.1:6380/0"]


def test_a_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValidationError, match="key_prefix"):
        RedisSettings(key_prefix="a{b}")
