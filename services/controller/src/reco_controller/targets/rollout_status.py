"""Is a Deployment's rollout done? The same reading as ``kubectl rollout status``.

Until the controller has observed the latest generation nothing is known; then a Progressing
condition with reason ProgressDeadlineExceeded is a failure for good; otherwise the rollout is
done once every replica is updated, no old replica is left and every updated one is available.
"""

from __future__ import annotations

from typing import Final

from reco_controller.targets.base import Progress
from reco_controller.targets.deployment import Condition, Deployment

PROGRESSING: Final = "Progressing"
REPLICA_FAILURE: Final = "ReplicaFailure"
TIMED_OUT: Final = "ProgressDeadlineExceeded"


def rollout_progress(deployment: Deployment) -> Progress:
    name = deployment.metadata.name
    status = deployment.status
    if deployment.metadata.generation > status.observed_generation:
        return Progress.waiting(f"waiting for the update of {name!r} to be observed")
    progressing = status.condition(PROGRESSING)
    if progressing is not None and progressing.reason == TIMED_OUT:
        return Progress.failure(
            f"{name!r} exceeded its progress deadline: {_why(deployment, progressing)}"
        )
    if deployment.spec.paused:
        return Progress.failure(f"{name!r} is paused: resume it to roll out")
    wanted = deployment.spec.replicas
    if status.updated_replicas < wanted:
        return Progress.waiting(
            f"{status.updated_replicas} of {wanted} new replicas of {name!r} updated"
        )
    if status.replicas > status.updated_replicas:
        old = status.replicas - status.updated_replicas
        return Progress.waiting(f"{old} old replicas of {name!r} pending termination")
    if status.available_replicas < status.updated_replicas:
        return Progress.waiting(
            f"{status.available_replicas} of {status.updated_replicas} updated replicas"
            f" of {name!r} available"
        )
    return Progress.complete(f"{name!r} rolled out: {wanted} replicas updated and available")


def _why(deployment: Deployment, progressing: Condition) -> str:
    """The Progressing message, and the ReplicaFailure one when pods could not be created."""
    messages = [progressing.message]
    failure = deployment.status.condition(REPLICA_FAILURE)
    if failure is not None and failure.status == "True":
        messages.append(failure.message)
    return "; ".join(m for m in messages if m) or "no progress"
