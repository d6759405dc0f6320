"""The worker Deployment as the controller reads and patches it.

Only the fields the controller needs are parsed (the API's JSON, camelCase), so status fixtures
copied from ``kubectl get deployment -o json`` drive the unit tests unchanged. The model the
workers run is the ``MODEL_URI`` env var of the worker container (the source of truth, beside
it ``MODEL_MANIFEST_SHA256``, the pin the worker verifies the manifest against); what is
known about it, and about the one before, lives in ``reco.dev/*`` annotations.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from reco_common.contracts import (
    MODEL_MANIFEST_SHA256_ENV,
    ContractError,
    EvalMetrics,
    ModelRef,
    decode,
    encode,
)
from reco_controller.targets.base import TargetError

logger = logging.getLogger(__name__)

ACTIVE: Final = "model"
PREVIOUS: Final = "previous-model"
FAILED_URI: Final = "reco.dev/failed-model-uri"


def annotation(slot: str, field: str) -> str:
    """``reco.dev/<slot>-<field>``, e.g. ``reco.dev/model-version``."""
    return f"reco.dev/{slot}-{field}"


class _Api(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class Condition(_Api):
    type: str
    status: str
    reason: str = ""
    message: str = ""


class DeploymentStatus(_Api):
    observed_generation: int = 0
    replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    conditions: list[Condition] = []

    def condition(self, kind: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == kind), None)


class EnvVar(_Api):
    name: str
    value: str | None = None


class Container(_Api):
    name: str
    env: list[EnvVar] = []

    def env_value(self, name: str) -> str | None:
        return next((e.value for e in self.env if e.name == name), None)


class PodSpec(_Api):
    containers: list[Container] = []


class PodTemplate(_Api):
    spec: PodSpec


class DeploymentSpec(_Api):
    replicas: int = 1
    paused: bool = False
    template: PodTemplate


class Metadata(_Api):
    name: str
    namespace: str = ""
    uid: str = ""
    generation: int = 0
    resource_version: str | None = None
    annotations: dict[str, str] = {}


class Deployment(_Api):
    metadata: Metadata
    spec: DeploymentSpec
    status: DeploymentStatus = DeploymentStatus()

    @staticmethod
    def parse(data: dict[str, Any]) -> Deployment:
        try:
            return Deployment.model_validate(data)
        except ValidationError as exc:
            raise TargetError(f"unexpected Deployment object: {exc}") from None

    def container(self, name: str) -> Container:
        for container in self.spec.template.spec.containers:
            if container.name == name:
                return container
        raise TargetError(
            f"deployment {self.metadata.namespace}/{self.metadata.name} has no container {name!r}"
        )

    def record(self, slot: str, uri: str | None) -> ModelRef | None:
        """The model in ``slot`` (``ACTIVE`` / ``PREVIOUS``) running ``uri``, from annotations."""
        if not uri:
            return None
        notes = self.metadata.annotations
        return ModelRef(
            uri=uri,
            version=notes.get(annotation(slot, "version")),
            metrics=self._metrics(notes.get(annotation(slot, "metrics"))),
            created_at=_timestamp(notes.get(annotation(slot, "created-at"))),
            manifest_sha256=notes.get(annotation(slot, "manifest-sha256")) or None,
        )

    def _metrics(self, raw: str | None) -> EvalMetrics | None:
        if raw is None:
            return None
        try:
            return decode(EvalMetrics, raw)
        except ContractError as exc:
            logger.warning(
                "ignoring unreadable metrics annotation on %s: %s", self.metadata.name, exc
            )
            return None


def _timestamp(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        logger.warning("ignoring unreadable timestamp annotation %r", raw)
        return None


def record_annotations(slot: str, record: ModelRef | None) -> dict[str, str | None]:
    """The annotations describing ``record`` in ``slot``; ``None`` values delete a key."""
    values: dict[str, str | None] = {
        annotation(slot, "version"): record.version if record else None,
        annotation(slot, "metrics"): (
            encode(record.metrics).decode() if record and record.metrics else None
        ),
        annotation(slot, "created-at"): (
            record.created_at.isoformat() if record and record.created_at else None
        ),
        annotation(slot, "manifest-sha256"): record.manifest_sha256 if record else None,
    }
    if slot != ACTIVE:  # the active model's URI is the env var itself
        values[annotation(slot, "uri")] = record.uri if record else None
    return values


def _env_patch(env_name: str, value: str | None) -> dict[str, Any]:
    if not value:  # nothing (or an annotation written empty): no variable at all
        return {"name": env_name, "$patch": "delete"}
    # valueFrom set to null: a URI that came from a ConfigMap is replaced, not merged with.
    return {"name": env_name, "value": value, "valueFrom": None}


def _model_env(env_name: str, record: ModelRef | None) -> list[dict[str, Any]]:
    """The model's URI and its pin (the worker verifies the manifest against it)."""
    return [
        _env_patch(env_name, record.uri if record else None),
        _env_patch(MODEL_MANIFEST_SHA256_ENV, record.manifest_sha256 if record else None),
    ]


def _patch(
    container: str, env: list[dict[str, Any]], notes: dict[str, str | None]
) -> dict[str, Any]:
    return {
        "metadata": {"annotations": notes},
        "spec": {"template": {"spec": {"containers": [{"name": container, "env": env}]}}},
    }


def rollout_patch(
    *, container: str, env_name: str, model: ModelRef, previous: ModelRef | None
) -> dict[str, Any]:
    """Strategic merge patch: ``env_name`` := the model's URI (other env vars untouched)."""
    notes = record_annotations(ACTIVE, model) | record_annotations(PREVIOUS, previous)
    return _patch(container, _model_env(env_name, model), notes)


def revert_patch(
    *, container: str, env_name: str, failed: ModelRef, previous: ModelRef | None
) -> dict[str, Any]:
    """Strategic merge patch back to ``previous`` (no URI before: the env var is removed)."""
    notes = (
        record_annotations(ACTIVE, previous)
        | record_annotations(PREVIOUS, None)
        | {FAILED_URI: failed.uri}
    )
    return _patch(container, _model_env(env_name, previous), notes)
