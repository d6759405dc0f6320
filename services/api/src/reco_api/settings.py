"""The API's settings (``RECO_API_*``), composed with the shared ones.

Documented in docs/api.md. A wrong value fails at start naming its variable
(:func:`reco_common.settings.load_settings`).
"""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar, Self

from limits import parse_many
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reco_common.contracts import Identifier, ModelName
from reco_common.settings import BearerToken, CommonSettings, Environment, refuse_placeholder


class HttpServer(enum.StrEnum):
    """The HTTP server in front of the app (docs/api.md "HTTP server", docs/benchmarks.md)."""

    GRANIAN = "granian"  # Rust (hyper): one write per response, measured faster
    UVICORN = "uvicorn"  # httptools and uvloop


PositiveSeconds = Annotated[float, Field(gt=0)]
NonNegativeSeconds = Annotated[float, Field(ge=0)]

# Time kept after the HTTP server has finished the requests in flight: lifespan shutdown and closing
# the Redis connection. The graceful-shutdown window given to the server is what remains of the
# bound.
CLOSE_RESERVE_S = 1.0


class ApiSettings(BaseSettings):
    """``RECO_API_*``: the listener, the request bounds, the guards and the shutdown timing."""

    model_config = SettingsConfigDict(env_prefix="RECO_API_", extra="ignore")

    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    # The internal port: /metrics, /docs, /openapi.json (and the probes); never published.
    ops_host: str = "0.0.0.0"
    ops_port: Annotated[int, Field(ge=0, le=65535)] = 8090
    server: HttpServer = HttpServer.GRANIAN
    default_model: ModelName = "default"

    # request bounds
    default_n: Annotated[int, Field(ge=1)] = 10
    max_n: Annotated[int, Field(ge=1, le=1000)] = 100
    max_offset: Annotated[int, Field(ge=0)] = 1000
    max_exclude: Annotated[int, Field(ge=0, le=1000)] = 100

    # Redis: a short timeout so that a hung server turns into a quick 503, never a hang
    redis_timeout_s: PositiveSeconds = 0.25
    # How old the in-process copy of a model's active record may get before a request reads it
    # again: a new activation reaches the API within this bound (0: read with every request).
    active_refresh_s: NonNegativeSeconds = 1.0
    static_fallback_items: list[Identifier] = []

    # shutdown: SIGTERM → not ready at once → serve drain_s → finish in flight → close → exit
    drain_s: NonNegativeSeconds = 10.0
    shutdown_timeout_s: PositiveSeconds = 25.0

    # guards
    api_keys: list[BearerToken] = []
    rate_limit: str | None = None
    limit_concurrency: Annotated[int, Field(ge=1)] = 1000
    backlog: Annotated[int, Field(ge=1)] = 2048
    forwarded_allow_ips: str = "127.0.0.1"

    access_log: bool = False
    http_metrics: bool = True

    @field_validator("rate_limit")
    @classmethod
    def _parsable_limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_many(value)  # raises ValueError naming what it could not read
        return value

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> Self:
        if self.ops_port == self.port:
            raise ValueError("RECO_API_OPS_PORT must differ from RECO_API_PORT (the public one)")
        if self.default_n > self.max_n:
            raise ValueError("RECO_API_DEFAULT_N must not exceed RECO_API_MAX_N")
        if self.shutdown_timeout_s < self.drain_s + CLOSE_RESERVE_S + 1.0:
            raise ValueError(
                "RECO_API_SHUTDOWN_TIMEOUT_S must leave at least 2 s after RECO_API_DRAIN_S "
                "to finish the requests in flight and close Redis"
            )
        return self

    @property
    def in_flight_timeout_s(self) -> float:
        """How long the server may wait for the requests in flight once the drain is over."""
        return self.shutdown_timeout_s - self.drain_s - CLOSE_RESERVE_S


class Settings(CommonSettings):
    """Everything the API process needs: the shared backends plus :class:`ApiSettings`."""

    uses_kafka: ClassVar[bool] = False  # the API reads Redis only; it has no Kafka principal
    api: ApiSettings = Field(default_factory=ApiSettings)

    @model_validator(mode="after")
    def _keys_required_outside_dev(self) -> Self:
        """Outside dev the API is never open: at least one key, none a placeholder. Several
        keys are accepted at once so that a key is rotated without downtime (add the new one,
        move the clients, remove the old one: docs/api.md)."""
        if self.env is not Environment.DEV:
            if not self.api.api_keys:
                raise ValueError(
                    f"RECO_API_API_KEYS is empty: RECO_ENV={self.env.value} requires API keys"
                    ' (a JSON list, e.g. ["<key>"]; several while rotating)'
                )
            for key in self.api.api_keys:
                refuse_placeholder("RECO_API_API_KEYS", key)
        return self
