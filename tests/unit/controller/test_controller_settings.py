"""``RECO_CONTROLLER_*``: parsed from the environment, inconsistent values refused by name."""

from __future__ import annotations

import pytest

from reco_common.contracts import PRIMARY_METRIC
from reco_common.settings import ConfigurationError, load_settings
from reco_controller.settings import Settings, TargetKind


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECO_ENV", "RECO_CONTROLLER_TARGET", "RECO_CONTROLLER_WORKER_URLS"):
        monkeypatch.delenv(name, raising=False)


def test_the_mapping_and_gate_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_CONTROLLER_DEPLOYMENTS", '{"shop": "worker-shop"}')
    monkeypatch.setenv("RECO_CONTROLLER_NAMESPACE", "reco")
    monkeypatch.setenv("RECO_CONTROLLER_GATE_METRICS", '["precision@10"]')
    monkeypatch.setenv("RECO_CONTROLLER_MAX_REGRESSION", "0.1")
    conf = load_settings(Settings).controller
    assert conf.target is TargetKind.KUBERNETES
    assert conf.deployments == {"shop": "worker-shop"}
    assert conf.gate_metrics == ["precision@10"]
    assert conf.max_regression == 0.1
    assert conf.lease_ns == "reco"
    assert conf.group_id == "controller"


def test_kubernetes_without_a_mapping_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECO_CONTROLLER_DEPLOYMENTS", raising=False)
    with pytest.raises(ConfigurationError, match="RECO_CONTROLLER_DEPLOYMENTS is empty"):
        load_settings(Settings)


def test_lease_timings_must_nest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_CONTROLLER_DEPLOYMENTS", '{"shop": "worker-shop"}')
    monkeypatch.setenv("RECO_CONTROLLER_RENEW_DEADLINE_S", "20")
    with pytest.raises(ConfigurationError, match="LEASE_DURATION_S > RECO_CONTROLLER_RENEW"):
        load_settings(Settings)


def test_a_rollout_may_not_outlast_the_consumer_poll_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECO_CONTROLLER_DEPLOYMENTS", '{"shop": "worker-shop"}')
    monkeypatch.setenv("RECO_CONTROLLER_ROLLOUT_TIMEOUT_S", "600")
    with pytest.raises(ConfigurationError, match="RECO_CONTROLLER_ROLLOUT_TIMEOUT_S"):
        load_settings(Settings)


def test_local_workers_need_a_real_token_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_CONTROLLER_TARGET", "local")
    monkeypatch.setenv("RECO_CONTROLLER_WORKER_URLS", '{"shop": ["http://127.0.0.1:8081"]}')
    monkeypatch.setenv("RECO_ENV", "prod")
    monkeypatch.setenv("RECO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECO_KAFKA_USERNAME", "reco-service")
    monkeypatch.setenv("RECO_KAFKA_PASSWORD", "a-real-kafka-password")
    monkeypatch.setenv("RECO_S3_SECRET_KEY", "a-real-one")
    monkeypatch.delenv("RECO_CONTROLLER_WORKER_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="RECO_CONTROLLER_WORKER_TOKEN"):
        load_settings(Settings)
    monkeypatch.setenv("RECO_CONTROLLER_WORKER_TOKEN", "s3cret-token")
    assert load_settings(Settings).controller.target is TargetKind.LOCAL


def test_the_gate_judges_the_primary_metric_by_default_and_never_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty list used to mean "whatever the candidate reports": the candidate chose."""
    monkeypatch.setenv("RECO_CONTROLLER_DEPLOYMENTS", '{"shop": "worker-shop"}')
    monkeypatch.delenv("RECO_CONTROLLER_GATE_METRICS", raising=False)
    conf = load_settings(Settings).controller
    assert conf.gate_metrics == [PRIMARY_METRIC]
    assert conf.max_clock_skew_s == 300
    monkeypatch.setenv("RECO_CONTROLLER_GATE_METRICS", "[]")
    with pytest.raises(ConfigurationError, match="RECO_CONTROLLER_GATE_METRICS"):
        load_settings(Settings)


@pytest.mark.parametrize("token", ["", "  "])
def test_a_blank_worker_token_is_refused_even_in_dev(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("RECO_CONTROLLER_TARGET", "local")
    monkeypatch.setenv("RECO_CONTROLLER_WORKER_URLS", '{"shop": ["http://127.0.0.1:8081"]}')
    monkeypatch.setenv("RECO_CONTROLLER_WORKER_TOKEN", token)
    with pytest.raises(ConfigurationError, match="RECO_CONTROLLER_WORKER_TOKEN"):
        load_settings(Settings)
