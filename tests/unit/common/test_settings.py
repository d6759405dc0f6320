from __future__ import annotations

import pytest
from pydantic import ValidationError

from reco_common.metrics import metric_name
from reco_common.settings import CommonSettings, ConfigurationError, RedisSettings, load_settings


def test_defaults_serve_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RECO_KAFKA_BOOTSTRAP", "RECO_REDIS_URL", "RECO_ENV"):
        monkeypatch.delenv(name, raising=False)
    settings = CommonSettings()
    assert settings.kafka.bootstrap == "127.0.0.1:9092"
    assert settings.redis.url.startswith("redis://127.0.0.1")


def test_environment_names_are_documented_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_KAFKA_BOOTSTRAP", "broker:19092")
    monkeypatch.setenv("RECO_KAFKA_TOPIC_PREFIX", "staging-")
    monkeypatch.setenv("RECO_REDIS_KEY_PREFIX", "stg")
    settings = CommonSettings()
    assert settings.kafka.bootstrap == "broker:19092"
    assert settings.kafka.topics.user_actions == "staging-user-actions"
    assert settings.redis.keys.history("u") == "stg:{u:u}:hist"


def test_a_bad_setting_fails_fast_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_REDIS_URL", "http://nope")
    with pytest.raises(ConfigurationError, match="RECO_REDIS_URL: String should match"):
        load_settings(RedisSettings)


def test_placeholder_secret_is_refused_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_ENV", "prod")
    monkeypatch.setenv("RECO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECO_KAFKA_USERNAME", "reco-service")
    monkeypatch.setenv("RECO_KAFKA_PASSWORD", "a-real-kafka-password")
    monkeypatch.delenv("RECO_S3_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError, match="RECO_S3_SECRET_KEY"):
        CommonSettings()
    monkeypatch.setenv("RECO_S3_SECRET_KEY", "a-real-one")
    assert CommonSettings().env == "prod"


def test_metric_names_follow_the_house_convention() -> None:
    assert metric_name("worker", "freshness", "seconds") == "reco_worker_freshness_seconds"
    with pytest.raises(ValueError, match="must match"):
        metric_name("Worker", "x")
