"""Starting a service: settings or one message naming the variable and exit 2; then logging."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from reco_common import service
from reco_common.service import EXIT_CONFIGURATION, load_service_settings
from reco_common.settings import CommonSettings


class Composed(BaseSettings):
    """Settings that compose the shared ones rather than extend them (as the worker's do)."""

    model_config = SettingsConfigDict(env_prefix="RECO_TEST_", extra="ignore")

    common: CommonSettings = Field(default_factory=CommonSettings)


@pytest.fixture
def logging_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``configure_logging`` was asked (the real one would take over pytest's handlers)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(service, "configure_logging", lambda **kwargs: calls.append(kwargs))
    return calls


def test_logging_follows_the_settings(
    monkeypatch: pytest.MonkeyPatch, logging_calls: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("RECO_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("RECO_LOG_JSON", "true")
    settings = load_service_settings(CommonSettings, service="api")
    assert settings.log_level == "DEBUG"
    assert logging_calls == [{"level": "DEBUG", "json": True, "service": "api"}]


def test_composed_settings_name_their_shared_part(
    logging_calls: list[dict[str, Any]],
) -> None:
    settings = load_service_settings(Composed, service="worker", shared=lambda s: s.common)
    assert isinstance(settings, Composed)
    assert logging_calls[0]["service"] == "worker"


def test_composed_settings_without_their_shared_part_are_a_programming_error(
    logging_calls: list[dict[str, Any]],
) -> None:
    with pytest.raises(TypeError, match="pass shared="):
        load_service_settings(Composed, service="worker")


def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    logging_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("RECO_REDIS_URL", "http://nope")
    with pytest.raises(SystemExit) as exited:
        load_service_settings(CommonSettings, service="api")
    assert exited.value.code == EXIT_CONFIGURATION
    assert "RECO_REDIS_URL: String should match" in capsys.readouterr().err
    assert logging_calls == []
