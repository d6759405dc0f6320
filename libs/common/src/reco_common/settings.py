"""Shared, typed settings that every service composes into its own ``Settings``.

Environment names (all prefixed ``RECO_``) are documented in docs/architecture.md. Defaults
serve the local dev stack (scripts/stack.sh); outside ``RECO_ENV=dev`` placeholder secrets are
refused at start, naming the setting.
"""

from __future__ import annotations

import enum
from typing import Annotated, Self, TypeVar

from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reco_common.contracts import RedisKeys, Topics

S = TypeVar("S", bound=BaseSettings)

DEV_PLACEHOLDER_SECRETS = frozenset({"recoadmin-secret", "change-me", "dev-token"})


def _not_blank(token: SecretStr) -> SecretStr:
    value = token.get_secret_value()
    if not value.strip():
        raise ValueError("must not be empty or white space (it would accept `Bearer ` alone)")
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError("must not contain white space")
    return token


# A bearer token or API key a service accepts or presents: never empty or blank, no white space.
BearerToken = Annotated[SecretStr, AfterValidator(_not_blank)]


class Environment(enum.StrEnum):
    DEV = "dev"
    PROD = "prod"


class KafkaSettings(BaseSettings):
    """``RECO_KAFKA_*``: the brokers and the topic namespace."""

    model_config = SettingsConfigDict(env_prefix="RECO_KAFKA_", extra="ignore")

    bootstrap: Annotated[str, Field(min_length=1)] = "127.0.0.1:9092"
    topic_prefix: str = ""
    client_id: str = "reco"
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)


class RedisSettings(BaseSettings):
    """``RECO_REDIS_*``: the server holding the served lists and histories."""

    model_config = SettingsConfigDict(env_prefix="RECO_REDIS_", extra="ignore")

    url: Annotated[str, Field(pattern=r"^rediss?://")] = "redis://127.0.0.1:6379/0"
    key_prefix: Annotated[str, Field(min_length=1)] = "reco"
    socket_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    max_connections: Annotated[int, Field(ge=1)] = 64

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.key_prefix)


class S3Settings(BaseSettings):
    """``RECO_S3_*``: the S3-compatible endpoint used for ``s3://`` URIs."""

    model_config = SettingsConfigDict(env_prefix="RECO_S3_", extra="ignore")

    endpoint_url: str | None = "http://127.0.0.1:9000"
    region: str = "us-east-1"
    access_key: str | None = "recoadmin"
    secret_key: SecretStr | None = SecretStr("recoadmin-secret")


class CommonSettings(BaseSettings):
    """What every service shares: environment, logging, and the three backends."""

    model_config = SettingsConfigDict(env_prefix="RECO_", extra="ignore")

    env: Environment = Environment.DEV
    log_level: str = "INFO"
    log_json: bool = False
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    s3: S3Settings = Field(default_factory=S3Settings)

    @model_validator(mode="after")
    def _no_placeholder_secrets_outside_dev(self) -> Self:
        if self.env is not Environment.DEV:
            refuse_placeholder("RECO_S3_SECRET_KEY", self.s3.secret_key)
        return self


def refuse_placeholder(name: str, value: SecretStr | None) -> None:
    """Raise when ``value`` is one of the dev placeholders (used outside ``RECO_ENV=dev``)."""
    if value is not None and value.get_secret_value() in DEV_PLACEHOLDER_SECRETS:
        raise ValueError(f"{name} is a development placeholder; set a real secret outside dev")


class ConfigurationError(RuntimeError):
    """Settings that cannot start a service; the message names each environment variable."""


def load_settings(cls: type[S]) -> S:
    """Build ``cls`` from the environment, or fail fast naming the variables that are wrong."""
    try:
        return cls()
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        lines.append(f"{_env_name(exc.title, loc)}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _env_name(model_title: str, loc: list[str]) -> str:
    prefixes = {c.__name__: c.model_config.get("env_prefix", "") for c in _settings_classes()}
    prefix = prefixes.get(model_title, "RECO_")
    return (prefix + "_".join(loc)).upper() if loc else model_title


def _settings_classes() -> list[type[BaseSettings]]:
    found: list[type[BaseSettings]] = []
    pending: list[type[BaseSettings]] = [BaseSettings]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
