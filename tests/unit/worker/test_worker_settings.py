"""The worker's settings: MODEL_URI, the control token outside dev, the policy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reco_common.contracts import MODEL_URI_ENV, ActionType
from reco_worker.settings import WorkerSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        MODEL_URI_ENV,
        "RECO_WORKER_MODEL_URI",
        "RECO_ENV",
        "RECO_WORKER_CONTROL_TOKEN",
        "RECO_WORKER_ALLOW_UNPINNED_LOADS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", [MODEL_URI_ENV, "RECO_WORKER_MODEL_URI"])
def test_the_model_uri_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "s3://reco/models/shop/v1")
    assert WorkerSettings().model_uri == "s3://reco/models/shop/v1"


def test_prod_refuses_the_placeholder_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_ENV", "prod")
    monkeypatch.setenv("RECO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECO_KAFKA_USERNAME", "reco-service")
    monkeypatch.setenv("RECO_KAFKA_PASSWORD", "a-real-kafka-password")
    monkeypatch.setenv("RECO_S3_SECRET_KEY", "a-real-s3-secret")
    with pytest.raises(ValidationError, match="RECO_WORKER_CONTROL_TOKEN"):
        WorkerSettings()
    monkeypatch.setenv("RECO_WORKER_CONTROL_TOKEN", "a-real-token")
    assert WorkerSettings().control_token.get_secret_value() == "a-real-token"


def test_unpinned_loads_are_refused_by_default_and_allowed_only_in_dev(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert WorkerSettings().allow_unpinned_loads is False
    monkeypatch.setenv("RECO_WORKER_ALLOW_UNPINNED_LOADS", "true")
    assert WorkerSettings().allow_unpinned_loads is True
    monkeypatch.setenv("RECO_ENV", "prod")
    monkeypatch.setenv("RECO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECO_KAFKA_USERNAME", "reco-service")
    monkeypatch.setenv("RECO_KAFKA_PASSWORD", "a-real-kafka-password")
    monkeypatch.setenv("RECO_S3_SECRET_KEY", "a-real-s3-secret")
    monkeypatch.setenv("RECO_WORKER_CONTROL_TOKEN", "a-real-token")
    with pytest.raises(ValidationError, match="RECO_WORKER_ALLOW_UNPINNED_LOADS"):
        WorkerSettings()


def test_the_policy_follows_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_WORKER_BLEND", "0.25")
    monkeypatch.setenv("RECO_WORKER_ACTION_WEIGHTS", '{"purchase": 20}')
    policy = WorkerSettings().policy
    assert policy.blend == 0.25
    assert policy.action_weights[ActionType.PURCHASE] == 20
    assert policy.action_weights[ActionType.VIEW] == 1.0


def test_the_consumer_group_is_per_model_and_namespaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_KAFKA_TOPIC_PREFIX", "stg-")
    assert WorkerSettings().group_id("shop") == "stg-worker-shop"


def test_the_group_waits_for_a_bounded_batch_and_evicts_a_silent_member_sooner() -> None:
    config = WorkerSettings(
        batch_timeout_s=20, session_timeout_s=9
    ).group_timeouts.consumer_config()
    assert config["session_timeout_ms"] == 9000
    assert config["heartbeat_interval_ms"] == 3000
    # A healthy batch ends (or is cancelled) before the group gives its partitions away.
    assert config["rebalance_timeout_ms"] == config["max_poll_interval_ms"] > 20_000


@pytest.mark.parametrize("token", ["", "   ", "\t", "has space", " padded"])
def test_an_empty_or_blank_token_is_refused_at_start_even_in_dev(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """An empty token made ``Authorization: Bearer`` with nothing after it a valid credential."""
    monkeypatch.setenv("RECO_ENV", "dev")
    monkeypatch.setenv("RECO_WORKER_CONTROL_TOKEN", token)
    with pytest.raises(ValidationError, match="control_token"):
        WorkerSettings()
