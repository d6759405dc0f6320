"""Shared, typed settings that every service composes into its own ``Settings``.

Environment names (all prefixed ``RECO_``) are documented in docs/architecture.md. Defaults
serve the local dev stack (scripts/stack.sh); outside ``RECO_ENV=dev`` placeholder secrets are
refused at start, naming the setting.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from aiokafka.helpers import create_ssl_context
from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reco_common.contracts import RedisKeys, Topics
from reco_common.kafka_access import Principal
from reco_common.storage_access import StoragePrincipal

S = TypeVar("S", bound=BaseSettings)

DEV_PLACEHOLDER_SECRETS = frozenset(
    {
        "recoadmin-secret",
        "change-me",
        "dev-token",
        *(p.dev_password for p in Principal),
        *(p.dev_secret for p in StoragePrincipal),
    }
)


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


class KafkaSecurity(enum.StrEnum):
    """How a client authenticates: not at all (the dev stack's development listener only), or
    SASL/SCRAM as its service's principal, over plain TCP or TLS."""

    PLAINTEXT = "PLAINTEXT"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class KafkaSettings(BaseSettings):
    """``RECO_KAFKA_*``: the brokers, the topic namespace and the client's principal."""

    model_config = SettingsConfigDict(env_prefix="RECO_KAFKA_", extra="ignore")

    bootstrap: Annotated[str, Field(min_length=1)] = "127.0.0.1:9092"
    topic_prefix: str = ""
    client_id: str = "reco"
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    # How long a client keeps trying to reach the brokers at start (unreachable, or the
    # principal not accepted yet) before the process gives up: 0 fails at once (tools, tests);
    # deploy/k8s sets it for pods that start beside Kafka and its users (docs/deploy.md).
    start_timeout_s: Annotated[float, Field(ge=0, le=3600)] = 0.0
    # Replicas of the topics this process creates; unset: every broker, up to three
    # (reco_common.kafka.topic_spec).
    replication_factor: Annotated[int, Field(ge=1)] | None = None
    security_protocol: KafkaSecurity = KafkaSecurity.PLAINTEXT
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = None
    # SASL_SSL: the CA bundle that signed the brokers' certificates (the system's when unset).
    ssl_cafile: str | None = None

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> Self:
        if self.security_protocol is not KafkaSecurity.PLAINTEXT and not (
            self.username and self.password and self.password.get_secret_value()
        ):
            raise ValueError(
                f"RECO_KAFKA_SECURITY_PROTOCOL={self.security_protocol.value} needs "
                "RECO_KAFKA_USERNAME and RECO_KAFKA_PASSWORD"
            )
        return self

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def client_options(self) -> dict[str, Any]:
        """The connection keywords of every aiokafka client (producer, consumer, admin)."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": self.security_protocol.value,
        }
        if self.security_protocol is KafkaSecurity.PLAINTEXT:
            return options
        assert self.password is not None  # the validator made sure
        options |= {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password.get_secret_value(),
        }
        if self.security_protocol is KafkaSecurity.SASL_SSL:
            options["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        return options


class RedisSettings(BaseSettings):
    """``RECO_REDIS_*``: the server holding the served lists and histories.

    ``redis://`` (or ``rediss://``) names one server; ``redis+cluster://`` (``rediss+cluster://``)
    a Redis Cluster by one or more of its nodes, comma-separated
    (``redis+cluster://10.0.0.1:7000,10.0.0.2:7000``); the client discovers the others. Both
    modes use the same key layout (``reco_common.contracts.RedisKeys``).
    """

    model_config = SettingsConfigDict(env_prefix="RECO_REDIS_", extra="ignore")

    url: Annotated[str, Field(pattern=r"^rediss?(\+cluster)?://")] = "redis://127.0.0.1:6379/0"
    # No braces: they would take the hash tag of every key (reco_common.contracts.RedisKeys).
    key_prefix: Annotated[str, Field(min_length=1, pattern=r"^[^{}\s]+$")] = "reco"
    socket_timeout_s: Annotated[float, Field(gt=0)] = 2.0
    max_connections: Annotated[int, Field(ge=1)] = 64

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.key_prefix)

    @property
    def cluster(self) -> bool:
        """The URL names a Redis Cluster."""
        return self.url.split("://", 1)[0].endswith("+cluster")

    def node_urls(self) -> list[str]:
        """One ``redis://`` (``rediss://``) URL per node the URL names, credentials kept."""
        scheme, rest = self.url.split("://", 1)
        scheme = scheme.removesuffix("+cluster")
        credentials, _, hosts = rest.rpartition("@")
        hosts, slash, path = hosts.partition("/")
        at = f"{credentials}@" if credentials else ""
        return [f"{scheme}://{at}{host}{slash}{path}" for host in hosts.split(",") if host]


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
    # A service that never talks to Kafka (the API) is not asked for Kafka credentials.
    uses_kafka: ClassVar[bool] = True

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
            if self.uses_kafka:
                refuse_anonymous_kafka(self.kafka)
        return self


def refuse_anonymous_kafka(kafka: KafkaSettings) -> None:
    """Outside dev a client authenticates as its service's principal (docs/security.md)."""
    if kafka.security_protocol is KafkaSecurity.PLAINTEXT:
        raise ValueError(
            "RECO_KAFKA_SECURITY_PROTOCOL=PLAINTEXT is for the dev stack only: set SASL_SSL (or "
            "SASL_PLAINTEXT), RECO_KAFKA_USERNAME and RECO_KAFKA_PASSWORD outside dev"
        )
    refuse_placeholder("RECO_KAFKA_PASSWORD", kafka.password)


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
