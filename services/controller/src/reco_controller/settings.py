"""The controller's settings (``RECO_CONTROLLER_*``), composed with the shared ones.

Documented in docs/controller.md. A wrong value fails at start naming its variable
(:func:`reco_common.settings.load_settings`).
"""

from __future__ import annotations

import enum
import os
import socket
from pathlib import Path
from typing import Annotated, Self

from pydantic import AnyHttpUrl, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reco_common.contracts import MODEL_URI_ENV, PRIMARY_METRIC, ModelName
from reco_common.settings import BearerToken, CommonSettings, Environment, refuse_placeholder

# EventConsumer lets a batch run for at most max_poll_interval (300 s) before the group evicts
# the member; a rollout is waited for inside the batch, so it must end before. (A failed rollout
# and its rollback may together take longer: the commit then fails and the redelivered event is
# recognised as already rolled back, so nothing is done twice.)
MAX_ROLLOUT_TIMEOUT_S = 280.0

PositiveSeconds = Annotated[float, Field(gt=0)]


class TargetKind(enum.StrEnum):
    """Where a rollout happens: worker Deployments, or worker processes over HTTP."""

    KUBERNETES = "kubernetes"
    LOCAL = "local"


def _default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ControllerSettings(BaseSettings):
    """``RECO_CONTROLLER_*``: the target, the model → worker mapping, the gate and the lease."""

    model_config = SettingsConfigDict(env_prefix="RECO_CONTROLLER_", extra="ignore")

    target: TargetKind = TargetKind.KUBERNETES
    group_id: Annotated[str, Field(min_length=1)] = "controller"

    # kubernetes target
    namespace: Annotated[str, Field(min_length=1)] = "default"
    deployments: dict[ModelName, Annotated[str, Field(min_length=1)]] = {}
    container: Annotated[str, Field(min_length=1)] = "worker"
    model_uri_env: Annotated[str, Field(min_length=1)] = MODEL_URI_ENV
    kubeconfig: Path | None = None
    poll_interval_s: PositiveSeconds = 0.5

    # local target
    worker_urls: dict[ModelName, list[AnyHttpUrl]] = {}
    worker_token: BearerToken = SecretStr("dev-token")
    worker_timeout_s: PositiveSeconds = 10.0

    # quality gate (fails closed: see reco_controller.gate)
    gate_metrics: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = [
        PRIMARY_METRIC
    ]
    max_clock_skew_s: Annotated[float, Field(ge=0, le=86_400)] = 300.0
    max_regression: Annotated[float, Field(ge=0, lt=1)] = 0.05
    baseline_margin: Annotated[float, Field(ge=-1)] = 0.0
    rollout_timeout_s: Annotated[float, Field(gt=0, le=MAX_ROLLOUT_TIMEOUT_S)] = 240.0
    # how often the leader checks each model's active record against its target
    activation_check_s: PositiveSeconds = 5.0

    # leader election
    lease_name: Annotated[str, Field(min_length=1)] = "reco-controller"
    lease_namespace: str | None = None
    lease_duration_s: Annotated[float, Field(ge=1)] = 15.0
    renew_deadline_s: Annotated[float, Field(ge=1)] = 10.0
    retry_period_s: PositiveSeconds = 2.0
    identity: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default_factory=_default_identity
    )

    # process
    health_host: str = "0.0.0.0"  # the kubelet probes the pod from outside
    health_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    grace_s: PositiveSeconds = 20.0

    @property
    def lease_ns(self) -> str:
        return self.lease_namespace or self.namespace

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.lease_duration_s > self.renew_deadline_s > self.retry_period_s:
            raise ValueError(
                "need RECO_CONTROLLER_LEASE_DURATION_S > RECO_CONTROLLER_RENEW_DEADLINE_S"
                " > RECO_CONTROLLER_RETRY_PERIOD_S"
            )
        if self.target is TargetKind.KUBERNETES and not self.deployments:
            raise ValueError(
                'RECO_CONTROLLER_DEPLOYMENTS is empty: map each model, e.g. {"shop": "worker-shop"}'
            )
        if self.target is TargetKind.LOCAL and not self.worker_urls:
            raise ValueError(
                "RECO_CONTROLLER_WORKER_URLS is empty: map each model to its workers,"
                ' e.g. {"shop": ["http://127.0.0.1:8081"]}'
            )
        return self


class Settings(CommonSettings):
    """Everything ``reco-controller`` reads from the environment."""

    controller: ControllerSettings = Field(default_factory=ControllerSettings)

    @model_validator(mode="after")
    def _no_placeholder_token_outside_dev(self) -> Self:
        if self.env is not Environment.DEV and self.controller.target is TargetKind.LOCAL:
            refuse_placeholder("RECO_CONTROLLER_WORKER_TOKEN", self.controller.worker_token)
        return self
