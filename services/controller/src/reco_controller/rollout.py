"""The decision about one published model, carried out on its target and reported.

For each ``model-published`` event: find the model's target; read the artifact's manifest,
pinned to the sha256 the event carries, and from then on trust only the manifest (its name,
version, creation time and metrics; the event's copies are ignored); refuse a model created
further in the future than the allowed clock skew; skip what is already done (the target
already runs that URI, or rolled it back before, or serves a newer model); judge it with the
quality gate (unless forced); then roll out, wait, and on failure go back to the previous
model. Every step that changes something is published as a ``RolloutEvent``. The model's
``active`` record (the API's fallback and ``model_version``) is switched once the rollout has
succeeded, before ``succeeded`` is reported, and switched back once a rollback settled
(:mod:`reco_controller.activation`): never while a rollout is in flight.

Idempotency comes from the target's own state, not from memory: a redelivered event whose
URI is already active and settled is a no-op; one whose rollout was interrupted (the leader
died mid-way) is resumed and waited for.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from reco_common.artifact import ArtifactError, Manifest
from reco_common.contracts import EvalMetrics, ModelPublished, ModelRef, RolloutEvent, RolloutStatus
from reco_controller.activation import Activations
from reco_controller.gate import GatePolicy, Verdict, evaluate
from reco_controller.manifests import ManifestSource
from reco_controller.metrics import ControllerMetrics
from reco_controller.targets.base import (
    RolloutTarget,
    TargetError,
    TargetResolver,
    TargetState,
)

logger = logging.getLogger(__name__)

Report = Callable[[RolloutEvent], Awaitable[None]]
# Whether this process may still write (the leader's lease is valid), asked before every write.
Leading = Callable[[], bool]


class LeadershipLostError(RuntimeError):
    """The lease expired before a write: the batch is abandoned uncommitted (the next leader
    gets it again and, the target's state being the memory, resumes rather than repeats)."""


class Decision(enum.StrEnum):
    ROLLED_OUT = "rolled_out"
    FAILED = "failed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    ALREADY_FAILED = "already_failed"
    STALE = "stale"
    UNMANAGED = "unmanaged"


@dataclass(frozen=True, slots=True)
class _Policy:
    report: Report
    gate: GatePolicy
    timeout_s: float
    metrics: ControllerMetrics
    manifests: ManifestSource
    max_clock_skew: timedelta
    leading: Leading
    activations: Activations


class Rollouts:
    """Carries out the decision about each published model on its target."""

    def __init__(
        self,
        *,
        targets: TargetResolver,
        report: Report,
        gate: GatePolicy,
        timeout_s: float,
        metrics: ControllerMetrics,
        manifests: ManifestSource,
        max_clock_skew_s: float,
        leading: Leading,
        activations: Activations,
    ) -> None:
        self._targets = targets
        self._policy = _Policy(
            report=report,
            gate=gate,
            timeout_s=timeout_s,
            metrics=metrics,
            manifests=manifests,
            max_clock_skew=timedelta(seconds=max_clock_skew_s),
            leading=leading,
            activations=activations,
        )

    async def handle(
        self, event: ModelPublished, *, force: bool = False, published_at: float | None = None
    ) -> Decision:
        """Decide and act; ``published_at`` (epoch seconds) times the patch for the metrics."""
        target = self._targets(event.model_name)
        if target is None:
            logger.warning("no target is configured for model %r: ignored", event.model_name)
            return self._decided(Decision.UNMANAGED)
        try:
            trusted = await self._verified(event)
        except ArtifactError as exc:
            logger.warning("%s: %s refused: %s", target.description, event.artifact_uri, exc)
            await _Run(self._policy, target, event).report(RolloutStatus.REJECTED, str(exc))
            return self._decided(Decision.REJECTED)
        run = _Run(self._policy, target, trusted)
        try:
            async with self._policy.activations.lock(trusted.model_name):
                decision = await run.decide_and_act(force=force, published_at=published_at)
        except TargetError as exc:
            logger.error("%s refused the rollout of %s: %s", target.description, event.version, exc)
            await run.report(RolloutStatus.FAILED, str(exc))
            decision = Decision.FAILED
        return self._decided(decision)

    async def _verified(self, event: ModelPublished) -> ModelPublished:
        """The event as the artifact's pinned manifest tells it (``ArtifactError`` when the event
        is unpinned, the manifest differs from the pin, or names another model)."""
        pin = event.manifest_sha256
        if not isinstance(pin, str):
            raise ArtifactError("the event carries no manifest_sha256: the artifact is not pinned")
        manifest = await self._policy.manifests(event.artifact_uri, sha256=pin)
        if (manifest.model_name, manifest.version) != (event.model_name, event.version):
            raise ArtifactError(
                f"the manifest is {manifest.model_name} {manifest.version},"
                f" the event announced {event.model_name} {event.version}"
            )
        return manifest.published(artifact_uri=event.artifact_uri, manifest_sha256=pin)

    def _decided(self, decision: Decision) -> Decision:
        self._policy.metrics.decisions.labels(decision.value).inc()
        return decision


class _Run:
    """One event on one target."""

    def __init__(self, policy: _Policy, target: RolloutTarget, event: ModelPublished) -> None:
        self._policy = policy
        self._target = target
        self._event = event
        self._model = ModelRef.of(event)

    async def decide_and_act(self, *, force: bool, published_at: float | None) -> Decision:
        state = await self._target.read()
        active = state.active
        if active is not None and active.uri == self._model.uri:
            if state.settled:
                logger.info("%s already runs %s: nothing to do", self._where, self._model.uri)
                await self._activate(state)  # the run that rolled it out may have died first
                return Decision.DUPLICATE
            logger.info("%s: resuming the unfinished rollout of %s", self._where, self._model.uri)
            return await self._roll_out(state.previous, "resumed", published_at)
        too_new = self._from_the_future()
        if too_new:
            await self.report(RolloutStatus.REJECTED, too_new)
            return Decision.REJECTED
        skipped = self._skipped(state, force=force)
        if skipped is not None:
            return skipped
        verdict = await self._judge(active)
        if not verdict.passed and not force:
            logger.warning(
                "%s: %s rejected by the gate: %s", self._where, self._model.uri, verdict.reason
            )
            await self.report(RolloutStatus.REJECTED, verdict.reason)
            return Decision.REJECTED
        reason = (
            verdict.reason if verdict.passed else f"forced by an operator; gate: {verdict.reason}"
        )
        return await self._roll_out(active, reason, published_at)

    def _from_the_future(self) -> str:
        """Why ``created_at`` cannot be true (it would make every later model stale), or ``""``."""
        limit = datetime.now(UTC) + self._policy.max_clock_skew
        if self._event.created_at <= limit:
            return ""
        return (
            f"created_at {self._event.created_at.isoformat()} is in the future beyond the allowed"
            f" clock skew of {self._policy.max_clock_skew.total_seconds():g} s"
        )

    async def _judge(self, active: ModelRef | None) -> Verdict:
        if active is None:
            return evaluate(self._event.metrics, None, self._policy.gate)
        current = active.metrics or await self._metrics_of(active)
        if current is None:
            return Verdict(False, f"the active model {active.uri} has no readable metrics")
        return evaluate(self._event.metrics, current, self._policy.gate)

    async def _metrics_of(self, active: ModelRef) -> EvalMetrics | None:
        """The active model's metrics from its manifest, when the target did not record them."""
        try:
            manifest: Manifest = await self._policy.manifests(active.uri, sha256=None)
        except ArtifactError as exc:
            logger.warning("%s: the active model's manifest: %s", self._where, exc)
            return None
        return manifest.metrics

    def _skipped(self, state: TargetState, *, force: bool) -> Decision | None:
        if force:
            return None
        if state.failed_uri == self._model.uri:
            logger.info("%s: %s was rolled back before: not retried", self._where, self._model.uri)
            return Decision.ALREADY_FAILED
        active = state.active
        if (
            active is not None
            and active.created_at is not None
            and self._event.created_at < active.created_at
        ):
            logger.info(
                "%s: %s is older than the active %s: ignored",
                self._where,
                self._model.uri,
                active.uri,
            )
            return Decision.STALE
        return None

    async def _roll_out(
        self, previous: ModelRef | None, reason: str, published_at: float | None
    ) -> Decision:
        self._ensure_leading("roll out")
        await self.report(RolloutStatus.STARTED, reason)
        await self._target.apply(model=self._model, previous=previous)
        patched = time.monotonic()
        if published_at is not None:
            self._policy.metrics.patch_latency.observe(max(0.0, time.time() - published_at))
        progress = await self._target.wait(timeout_s=self._policy.timeout_s)
        self._policy.metrics.rollout_duration.observe(time.monotonic() - patched)
        if progress.done:
            await self._activate(await self._target.read())
            await self.report(RolloutStatus.SUCCEEDED, progress.message)
            return Decision.ROLLED_OUT
        logger.error(
            "%s: the rollout of %s failed: %s", self._where, self._model.uri, progress.message
        )
        await self.report(RolloutStatus.FAILED, progress.message)
        await self._roll_back(previous)
        return Decision.FAILED

    async def _roll_back(self, previous: ModelRef | None) -> None:
        self._ensure_leading("roll back")
        await self._target.revert(failed=self._model, previous=previous)
        progress = await self._target.wait(timeout_s=self._policy.timeout_s)
        back_to = previous.uri if previous else "no model"
        if progress.done:
            reason = f"back to {back_to}: {progress.message}"
            await self._activate(await self._target.read())
        else:
            reason = f"back to {back_to}, not settled yet: {progress.message}"
            logger.error("%s: %s", self._where, reason)
        await self.report(RolloutStatus.ROLLED_BACK, reason)

    async def _activate(self, state: TargetState) -> None:
        """The ``active`` record onto what the target is settled on (idempotent). A failure
        does not undo or block the rollout: the leader's next check writes the record."""
        self._ensure_leading("activate")
        await self._policy.activations.try_settle(self._event.model_name, state, where=self._where)

    def _ensure_leading(self, what: str) -> None:
        if not self._policy.leading():
            raise LeadershipLostError(
                f"{self._where}: the lease expired before the write: not going to {what}"
                f" {self._model.uri}"
            )

    async def report(self, status: RolloutStatus, reason: str) -> None:
        """Publish the event: a write too, so only while the lease is valid (a leader that woke
        from a pause past its lease must not tell the world how a rollout it no longer owns
        ended: the next leader decides that, and reports it)."""
        self._ensure_leading(f"report {status.value} for")
        event = RolloutEvent(
            model_name=self._event.model_name,
            version=self._event.version,
            artifact_uri=self._event.artifact_uri,
            status=status,
            target=self._target.kind,
            reason=reason,
            at=datetime.now(UTC),
        )
        await self._policy.report(event)
        self._policy.metrics.rollout_events.labels(status.value).inc()
        logger.info("%s %s %s: %s", self._where, status.value, self._event.version, reason)

    @property
    def _where(self) -> str:
        return self._target.description
