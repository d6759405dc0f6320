"""What every rollout target offers the controller, and the records they exchange.

A target moves the workers of one model to a model artifact and tells how that went: the
``kubernetes`` target patches a worker Deployment, the ``local`` one calls the workers' model
control endpoint. Both are driven the same way by :class:`reco_controller.rollout.Rollouts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from reco_common.contracts import ModelRef
from reco_common.redis_store import Epoch


class TargetError(RuntimeError):
    """A refusal that retrying cannot fix (forbidden, not found, invalid): reported, not retried."""


@dataclass(frozen=True, slots=True)
class TargetState:
    """What the workers of one model run now.

    ``settled``: every worker runs ``active`` (no rollout in flight). ``previous``: what ran
    before ``active`` (to roll back an interrupted rollout). ``failed_uri``: the last model
    that was rolled back, so that its redelivered event does not start a second attempt.
    ``epoch``: grows with every change of the target (the Deployment's generation, the
    ``local`` state's counter); the ``active`` record is written with it as its fence.
    """

    active: ModelRef | None
    previous: ModelRef | None
    failed_uri: str | None
    settled: bool
    epoch: Epoch


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a rollout stands: ``done``, ``failed`` (for good) or still waiting; ``message`` says why."""

    done: bool
    failed: bool
    message: str

    @staticmethod
    def complete(message: str) -> Progress:
        return Progress(done=True, failed=False, message=message)

    @staticmethod
    def waiting(message: str) -> Progress:
        return Progress(done=False, failed=False, message=message)

    @staticmethod
    def failure(message: str) -> Progress:
        return Progress(done=False, failed=True, message=message)


class RolloutTarget(Protocol):
    """The workers of one model, wherever they run."""

    @property
    def kind(self) -> str:
        """``kubernetes`` or ``local``: the ``target`` field of every rollout event."""
        ...

    @property
    def description(self) -> str:
        """Where exactly, for log lines (e.g. ``deployment reco/worker-shop``)."""
        ...

    async def read(self) -> TargetState:
        """What the workers run now."""
        ...

    async def apply(self, *, model: ModelRef, previous: ModelRef | None) -> None:
        """Start moving the workers to ``model``, remembering ``previous`` (idempotent)."""
        ...

    async def wait(self, *, timeout_s: float) -> Progress:
        """Wait until the workers run what was applied, it failed, or ``timeout_s`` passed."""
        ...

    async def revert(self, *, failed: ModelRef, previous: ModelRef | None) -> None:
        """Move the workers back to ``previous`` and remember ``failed`` as failed."""
        ...


class TargetResolver(Protocol):
    """Finds the target serving a model; ``None`` when this controller does not manage it."""

    def __call__(self, model_name: str) -> RolloutTarget | None: ...

    def managed(self) -> Mapping[str, RolloutTarget]:
        """Every model this controller manages, with its target."""
        ...
