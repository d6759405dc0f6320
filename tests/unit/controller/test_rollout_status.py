"""``rollout_progress`` reads a Deployment's status the way ``kubectl rollout status`` does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from reco_controller.targets.deployment import Deployment
from reco_controller.targets.rollout_status import rollout_progress

Factory = Callable[..., Any]

QUOTA = (
    'pods "worker-shop-5f6d8-x2x" is forbidden: exceeded quota: pods, requested: pods=1,'
    " used: pods=2, limited: pods=2"
)


def _progress(data: dict[str, Any]) -> tuple[bool, bool, str]:
    p = rollout_progress(Deployment.parse(data))
    return p.done, p.failed, p.message


def test_a_settled_deployment_is_done(deployment: Factory) -> None:
    done, failed, message = _progress(deployment())
    assert (done, failed) == (True, False)
    assert "2 replicas updated and available" in message


def test_nothing_is_known_until_the_new_generation_is_observed(
    deployment: Factory, progressing: Factory
) -> None:
    # Even a leftover ProgressDeadlineExceeded from the previous rollout must not count yet.
    stale = deployment(
        generation=4,
        status={"conditions": [progressing("ProgressDeadlineExceeded", "old", status="False")]},
    )
    done, failed, message = _progress(stale)
    assert (done, failed) == (False, False)
    assert "to be observed" in message


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"updatedReplicas": 0, "replicas": 3, "availableReplicas": 2}, "0 of 2 new replicas"),
        ({"updatedReplicas": 1, "replicas": 3, "availableReplicas": 2}, "1 of 2 new replicas"),
        ({"updatedReplicas": 2, "replicas": 3, "availableReplicas": 2}, "1 old replicas"),
        ({"updatedReplicas": 2, "replicas": 2, "availableReplicas": 1}, "1 of 2 updated replicas"),
    ],
    ids=["no-new-replica", "half-updated", "old-pending-termination", "new-not-available"],
)
def test_a_rollout_in_progress_is_waiting_with_the_reason(
    status: dict[str, Any], expected: str, deployment: Factory, progressing: Factory
) -> None:
    in_progress = {
        "observedGeneration": 4,
        "conditions": [progressing("ReplicaSetUpdated", 'ReplicaSet "x" is progressing.')],
        **status,
    }
    done, failed, message = _progress(deployment(generation=4, status=in_progress))
    assert (done, failed) == (False, False)
    assert expected in message


def test_missing_status_fields_mean_zero_replicas(deployment: Factory) -> None:
    fresh = deployment(generation=1, status={"observedGeneration": 1})
    fresh["status"] = {"observedGeneration": 1}
    done, _, message = _progress(fresh)
    assert not done
    assert "0 of 2 new replicas" in message


def test_progress_deadline_exceeded_is_a_failure_with_the_replica_failure_reason(
    deployment: Factory, progressing: Factory
) -> None:
    stuck = {
        "observedGeneration": 4,
        "replicas": 2,
        "updatedReplicas": 0,
        "availableReplicas": 2,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            progressing(
                "ProgressDeadlineExceeded",
                'ReplicaSet "worker-shop-5f6d8" has timed out progressing.',
                status="False",
            ),
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": QUOTA,
            },
        ],
    }
    done, failed, message = _progress(deployment(generation=4, status=stuck))
    assert (done, failed) == (False, True)
    assert "exceeded its progress deadline" in message
    assert "timed out progressing" in message
    assert "exceeded quota" in message


def test_a_paused_deployment_fails_instead_of_waiting_forever(deployment: Factory) -> None:
    done, failed, message = _progress(deployment(paused=True))
    assert (done, failed) == (False, True)
    assert "paused" in message


def test_a_scaled_to_zero_deployment_is_done(deployment: Factory) -> None:
    zero = deployment(status={"replicas": 0, "updatedReplicas": 0, "availableReplicas": 0})
    zero["spec"]["replicas"] = 0
    done, failed, _ = _progress(zero)
    assert (done, failed) == (True, False)
