"""Fixtures of the controller's unit tests: Deployment objects as ``kubectl get -o json`` prints them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from reco_common.contracts import MODEL_URI_ENV

MODEL_URI = "s3://reco/models/shop/v1"

BASE: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "worker-shop",
        "namespace": "reco",
        "generation": 3,
        "annotations": {"deployment.kubernetes.io/revision": "2"},
    },
    "spec": {
        "replicas": 2,
        "progressDeadlineSeconds": 600,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "worker",
                        "image": "reco-worker:1",
                        "env": [
                            {"name": "RECO_KAFKA_BOOTSTRAP", "value": "kafka:9092"},
                            {"name": MODEL_URI_ENV, "value": MODEL_URI},
                        ],
                    },
                    {"name": "sidecar", "image": "sidecar:1"},
                ]
            }
        },
    },
    "status": {
        "observedGeneration": 3,
        "replicas": 2,
        "updatedReplicas": 2,
        "readyReplicas": 2,
        "availableReplicas": 2,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": 'ReplicaSet "worker-shop-7d4b9c" has successfully progressed.',
            },
        ],
    },
}


def _deployment(
    *,
    generation: int = 3,
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    paused: bool = False,
    env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``BASE`` with the given changes (``status`` keys replace the base status's keys)."""
    d = copy.deepcopy(BASE)
    d["metadata"]["generation"] = generation
    d["metadata"]["annotations"].update(annotations or {})
    d["status"].update(status or {})
    if paused:
        d["spec"]["paused"] = True
    if env is not None:
        d["spec"]["template"]["spec"]["containers"][0]["env"] = env
    return d


def _progressing(reason: str, message: str, status: str = "True") -> dict[str, str]:
    return {"type": "Progressing", "status": status, "reason": reason, "message": message}


DeploymentFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def deployment() -> DeploymentFactory:
    return _deployment


@pytest.fixture
def progressing() -> Callable[..., dict[str, str]]:
    return _progressing
