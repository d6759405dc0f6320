"""The object-store access matrix and the files rendered from it (docs/security.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reco_common.storage_access import StoragePrincipal, bucket_policy, identity_policy, render

REPO = Path(__file__).resolve().parents[3]


def test_the_local_stacks_bucket_policy_is_the_matrix() -> None:
    path = REPO / "scripts/stack/s3/policy.json"
    assert path.read_text() == render(bucket_policy("reco")), f"regenerate {path}"


@pytest.mark.parametrize("principal", list(StoragePrincipal))
def test_each_prod_identity_policy_is_the_matrix(principal: StoragePrincipal) -> None:
    path = REPO / f"deploy/k8s/overlays/prod/iam/{principal.value}.json"
    assert path.read_text() == render(identity_policy("reco", principal)), f"regenerate {path}"


def test_only_the_trainer_writes_and_only_under_models_and_snapshots() -> None:
    writes = {
        principal: [
            resource
            for statement in bucket_policy("reco")["Statement"]
            if principal.value in statement["Principal"]["AWS"]
            and "s3:PutObject" in statement["Action"]
            for resource in statement["Resource"]
        ]
        for principal in StoragePrincipal
    }
    assert writes == {
        StoragePrincipal.TRAINER: ["arn:aws:s3:::reco/models/*", "arn:aws:s3:::reco/snapshots/*"],
        StoragePrincipal.CONTROLLER: [],
        StoragePrincipal.WORKER: [],
    }
    assert "Delete" not in json.dumps(identity_policy("reco", StoragePrincipal.WORKER))
