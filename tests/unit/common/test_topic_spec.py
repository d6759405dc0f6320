"""How a topic of the contract is created: partitions from the contract, replicas from the
cluster's size (or the setting), and the in-sync minimum that goes with them."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import InvalidReplicationFactorError

from reco_common.contracts import Topics
from reco_common.kafka import (
    TopicSpec,
    _raise_for_topic_errors,
    _served,
    _warn_if_counts_differ,
    topic_spec,
)
from reco_common.settings import KafkaSettings


@pytest.mark.parametrize(
    ("brokers", "replication", "min_insync"),
    [(1, 1, 1), (2, 2, 1), (3, 3, 2), (5, 3, 2)],
)
def test_replicas_follow_the_broker_count_up_to_three(
    brokers: int, replication: int, min_insync: int
) -> None:
    spec = topic_spec("user-actions", partitions=24, brokers=brokers)
    assert spec == TopicSpec("user-actions", 24, replication, min_insync)


@pytest.mark.parametrize(
    ("setting", "replication", "min_insync"), [(1, 1, 1), (2, 2, 1), (3, 3, 2), (4, 4, 2)]
)
def test_the_setting_overrides_the_broker_count(
    setting: int, replication: int, min_insync: int
) -> None:
    """A production cluster whose broker is down as a topic is made still gets 3 replicas."""
    spec = topic_spec("user-actions", partitions=24, brokers=2, replication=setting)
    assert (spec.replication, spec.min_insync) == (replication, min_insync)


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KafkaSettings().replication_factor is None
    monkeypatch.setenv("RECO_KAFKA_REPLICATION_FACTOR", "3")
    assert KafkaSettings().replication_factor == 3


def test_the_new_topic_carries_the_in_sync_minimum() -> None:
    topics = Topics("t-")
    name = topics.user_actions
    new = topic_spec(name, partitions=topics.partitions(name), brokers=3).new_topic()
    assert (new.name, new.num_partitions, new.replication_factor) == (name, 24, 3)
    assert new.topic_configs == {"min.insync.replicas": "2"}


@pytest.mark.parametrize(("partitions", "brokers"), [(0, 3), (3, 0)])
def test_an_impossible_spec_is_refused(partitions: int, brokers: int) -> None:
    with pytest.raises(ValueError, match="partitions on"):
        topic_spec("t", partitions=partitions, brokers=brokers)


def test_a_topic_made_concurrently_is_no_failure_but_a_refusal_is() -> None:
    _raise_for_topic_errors([("a", 0, None), ("b", 36, "exists")])  # TopicAlreadyExists
    with pytest.raises(InvalidReplicationFactorError, match="creating topic c"):
        _raise_for_topic_errors([("a", 0, None), ("c", 38, "3 > 2 brokers")])


def test_a_new_topic_is_served_once_every_partition_has_a_leader() -> None:
    described = [
        {"topic": "a", "error_code": 0, "partitions": [{"leader": 1}, {"leader": -1}]},
        {"topic": "b", "error_code": 0, "partitions": [{"leader": 2}, {"leader": 3}]},
        {"topic": "c", "error_code": 3, "partitions": []},  # not known to this broker yet
    ]
    assert _served(described) == {"b": 2}


def test_an_existing_topic_with_another_count_is_kept_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    described = [
        {"topic": "old", "error_code": 0, "partitions": [{"leader": 1}] * 3},
        {"topic": "new", "error_code": 0, "partitions": [{"leader": 1}] * 24},
    ]
    with caplog.at_level(logging.WARNING, logger="reco_common.kafka"):
        _warn_if_counts_differ({"old": 24, "new": 24}, described)
    assert [r.getMessage()[:50] for r in caplog.records] == [
        "topic old has 3 partitions, not the 24 of the cont"
    ]
