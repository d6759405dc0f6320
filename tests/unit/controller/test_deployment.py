"""Reading the model state off a Deployment, and the patches that roll it forward and back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from reco_common.contracts import (
    MODEL_MANIFEST_SHA256_ENV,
    MODEL_URI_ENV,
    EvalMetrics,
    ModelRef,
    decode,
)
from reco_controller.targets.base import TargetError
from reco_controller.targets.deployment import (
    ACTIVE,
    FAILED_URI,
    PREVIOUS,
    Deployment,
    annotation,
    revert_patch,
    rollout_patch,
)

Factory = Callable[..., dict[str, Any]]
METRICS = EvalMetrics(model={"precision@10": 0.2}, baseline={"precision@10": 0.05})
V1 = ModelRef(
    uri="s3://reco/models/shop/v1",
    version="v1",
    metrics=METRICS,
    created_at=datetime(2026, 11, 1, tzinfo=UTC),
)
PIN = "a" * 64
V2 = ModelRef(uri="s3://reco/models/shop/v2", version="v2", metrics=METRICS, manifest_sha256=PIN)


def _env(patch: dict[str, Any]) -> list[dict[str, Any]]:
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "worker"
    assert set(container) == {"name", "env"}, "nothing but the env of the worker container"
    env: list[dict[str, Any]] = container["env"]
    return env


def test_rollout_patch_sets_only_model_uri_and_its_pin_and_records_both_models() -> None:
    patch = rollout_patch(container="worker", env_name=MODEL_URI_ENV, model=V2, previous=V1)
    assert _env(patch) == [
        {"name": MODEL_URI_ENV, "value": V2.uri, "valueFrom": None},
        {"name": MODEL_MANIFEST_SHA256_ENV, "value": PIN, "valueFrom": None},
    ]
    notes = patch["metadata"]["annotations"]
    assert notes[annotation(ACTIVE, "manifest-sha256")] == PIN
    assert notes[annotation(PREVIOUS, "manifest-sha256")] is None  # v1 was never pinned
    assert notes[annotation(ACTIVE, "version")] == "v2"
    assert notes[annotation(ACTIVE, "created-at")] is None  # unknown: the key is removed
    assert notes[annotation(PREVIOUS, "uri")] == V1.uri
    assert notes[annotation(PREVIOUS, "version")] == "v1"
    assert notes[annotation(PREVIOUS, "created-at")] == "2026-11-01T00:00:00+00:00"
    assert decode(EvalMetrics, notes[annotation(PREVIOUS, "metrics")]) == METRICS
    assert FAILED_URI not in notes


def test_revert_patch_restores_the_previous_model_and_remembers_the_failed_one() -> None:
    patch = revert_patch(container="worker", env_name=MODEL_URI_ENV, failed=V2, previous=V1)
    assert _env(patch) == [
        {"name": MODEL_URI_ENV, "value": V1.uri, "valueFrom": None},
        {"name": MODEL_MANIFEST_SHA256_ENV, "$patch": "delete"},  # no pin: none is left behind
    ]
    notes = patch["metadata"]["annotations"]
    assert notes[annotation(ACTIVE, "version")] == "v1"
    assert notes[annotation(PREVIOUS, "uri")] is None
    assert notes[FAILED_URI] == V2.uri


def test_revert_without_a_previous_model_removes_the_env_var() -> None:
    patch = revert_patch(container="worker", env_name=MODEL_URI_ENV, failed=V2, previous=None)
    assert _env(patch) == [
        {"name": MODEL_URI_ENV, "$patch": "delete"},
        {"name": MODEL_MANIFEST_SHA256_ENV, "$patch": "delete"},
    ]


def test_annotations_written_by_a_patch_read_back_as_the_same_records(
    deployment: Factory,
) -> None:
    notes = rollout_patch(container="worker", env_name=MODEL_URI_ENV, model=V1, previous=V2)[
        "metadata"
    ]["annotations"]
    data = deployment(annotations={k: v for k, v in notes.items() if v is not None})
    d = Deployment.parse(data)
    uri = d.container("worker").env_value(MODEL_URI_ENV)
    assert d.record(ACTIVE, uri) == V1
    assert d.record(PREVIOUS, d.metadata.annotations[annotation(PREVIOUS, "uri")]) == V2


def test_a_deployment_without_annotations_knows_only_the_uri(deployment: Factory) -> None:
    d = Deployment.parse(deployment())
    uri = d.container("worker").env_value(MODEL_URI_ENV)
    assert d.record(ACTIVE, uri) == ModelRef(uri="s3://reco/models/shop/v1")
    assert d.record(ACTIVE, d.container("sidecar").env_value(MODEL_URI_ENV)) is None


def test_unreadable_annotations_are_ignored_not_fatal(deployment: Factory) -> None:
    broken = {annotation(ACTIVE, "metrics"): "{not json", annotation(ACTIVE, "created-at"): "x"}
    d = Deployment.parse(deployment(annotations=broken))
    record = d.record(ACTIVE, "s3://m")
    assert record == ModelRef(uri="s3://m")


def test_a_missing_worker_container_is_a_permanent_error(deployment: Factory) -> None:
    with pytest.raises(TargetError, match="no container 'trainer'"):
        Deployment.parse(deployment()).container("trainer")
