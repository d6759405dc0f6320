"""The API's settings: environment names, bounds, the shutdown budget, placeholder keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from reco_api.settings import ApiSettings, Settings
from reco_common.settings import ConfigurationError, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECO_API_PORT", raising=False)
    settings = ApiSettings()
    assert (settings.port, settings.default_model, settings.api_keys) == (8080, "default", [])
    assert settings.rate_limit is None
    assert settings.in_flight_timeout_s == settings.shutdown_timeout_s - settings.drain_s - 1


def test_composed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_API_PORT", "9090")
    monkeypatch.setenv("RECO_API_DRAIN_S", "3")
    monkeypatch.setenv("RECO_API_API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("RECO_REDIS_KEY_PREFIX", "stg")
    settings = Settings()
    assert (settings.api.port, settings.api.drain_s) == (9090, 3.0)
    assert [k.get_secret_value() for k in settings.api.api_keys] == ["k1", "k2"]
    assert settings.redis.keys.active_model("m") == "stg:{m:m}:active"


def test_the_shutdown_bound_must_cover_the_drain() -> None:
    with pytest.raises(ValidationError, match="RECO_API_SHUTDOWN_TIMEOUT_S"):
        ApiSettings(drain_s=10, shutdown_timeout_s=11)


def test_the_default_n_within_the_maximum() -> None:
    with pytest.raises(ValidationError, match="RECO_API_DEFAULT_N"):
        ApiSettings(default_n=20, max_n=10)


def test_an_unreadable_rate_limit_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_API_RATE_LIMIT", "lots")
    with pytest.raises(ConfigurationError, match="RECO_API_RATE_LIMIT"):
        load_settings(ApiSettings)


def test_placeholder_api_keys_are_refused_outside_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_ENV", "prod")
    monkeypatch.setenv("RECO_S3_SECRET_KEY", "a-real-one")
    monkeypatch.setenv("RECO_API_API_KEYS", '["change-me"]')
    with pytest.raises(ValidationError, match="RECO_API_API_KEYS"):
        Settings()
    monkeypatch.setenv("RECO_API_API_KEYS", '["a-real-key"]')
    assert len(Settings().api.api_keys) == 1


def test_outside_dev_the_api_refuses_to_start_without_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The API used to be open by default behind a public LoadBalancer."""
    monkeypatch.setenv("RECO_ENV", "prod")
    monkeypatch.setenv("RECO_S3_SECRET_KEY", "a-real-one")
    monkeypatch.delenv("RECO_API_API_KEYS", raising=False)
    with pytest.raises(ValidationError, match="RECO_API_API_KEYS is empty: RECO_ENV=prod"):
        Settings()
    monkeypatch.setenv("RECO_ENV", "dev")
    assert Settings().api.api_keys == []


@pytest.mark.parametrize("keys", ['[""]', '["  "]', '["k1", " "]'])
def test_blank_api_keys_are_refused_everywhere(monkeypatch: pytest.MonkeyPatch, keys: str) -> None:
    monkeypatch.setenv("RECO_API_API_KEYS", keys)
    with pytest.raises(ConfigurationError, match="RECO_API_API_KEYS"):
        load_settings(ApiSettings)
