"""The decision about each published model, over a fake target and fake manifests (our own
boundaries): the decision trusts the pinned manifest, not the event."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from controller_fakes import MemoryRecords

from reco_common.artifact import REQUIRED_FILES, ArtifactError, FileEntry, Manifest, PopularList
from reco_common.contracts import (
    ActiveModel,
    EvalMetrics,
    ModelPublished,
    ModelRef,
    RolloutEvent,
    RolloutStatus,
    encode,
)
from reco_common.redis_store import Epoch
from reco_controller.activation import Activations
from reco_controller.gate import GatePolicy
from reco_controller.metrics import ControllerMetrics
from reco_controller.rollout import Decision, LeadershipLostError, Rollouts
from reco_controller.targets.base import Progress, TargetError, TargetState

T0 = datetime(2026, 11, 1, tzinfo=UTC)
GOOD = EvalMetrics(model={"precision@10": 0.2}, baseline={"precision@10": 0.05})
BAD = EvalMetrics(model={"precision@10": 0.1}, baseline={"precision@10": 0.05})
ACTIVE = ModelRef(uri="s3://reco/models/shop/v1", version="v1", metrics=GOOD, created_at=T0)


def _manifest(version: str, *, metrics: EvalMetrics, created_at: datetime) -> Manifest:
    return Manifest(
        model_name="shop",
        version=version,
        created_at=created_at,
        data_snapshot="snap",
        params={},
        metrics=metrics,
        library_versions={},
        n_users=1,
        n_items=1,
        dim=1,
        files={name: FileEntry(sha256="0" * 64, bytes=1) for name in REQUIRED_FILES},
    )


# Every manifest the fake store holds, by the sha256 of its bytes.
STORED: dict[str, Manifest] = {}


def _stored(manifest: Manifest) -> str:
    digest = hashlib.sha256(encode(manifest)).hexdigest()
    STORED[digest] = manifest
    return digest


_stored(_manifest("v1", metrics=GOOD, created_at=T0))


def _event(
    version: str = "v2",
    *,
    metrics: EvalMetrics = GOOD,
    age: int = 0,
    created_at: datetime | None = None,
) -> ModelPublished:
    """The event of a stored artifact, pinned to its manifest."""
    manifest = _manifest(
        version, metrics=metrics, created_at=created_at or T0 + timedelta(hours=1 - age)
    )
    return manifest.published(
        artifact_uri=f"s3://reco/models/shop/{version}", manifest_sha256=_stored(manifest)
    )


async def _manifests(uri: str, *, sha256: str | None) -> Manifest:
    """The fake store: pinned reads by digest; an unpinned read finds the URI's manifest."""
    found = [m for d, m in STORED.items() if sha256 in (d, None) and uri.endswith(m.version)]
    if not found:
        raise ArtifactError(f"{uri}: the manifest's sha256 is not the published {sha256}")
    return found[-1]


async def _popular(uri: str, *, sha256: str | None) -> tuple[Manifest, PopularList]:
    manifest = await _manifests(uri, sha256=sha256)
    return manifest, PopularList(items=[f"popular-of-{manifest.version}"], scores=[1.0])


def _state(
    active: ModelRef | None,
    *,
    previous: ModelRef | None = None,
    failed_uri: str | None = None,
    settled: bool,
    epoch: int = 1,
) -> TargetState:
    return TargetState(
        active=active,
        previous=previous,
        failed_uri=failed_uri,
        settled=settled,
        epoch=Epoch("fake", epoch),
    )


@dataclass
class FakeTarget:
    """Workers in memory: ``apply``/``revert`` change the state (a new epoch), ``wait`` plays
    ``outcomes`` (a complete one settles the target, as the workers all run it then)."""

    state: TargetState
    outcomes: list[Progress] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    refuse: bool = False
    kind: str = "kubernetes"
    description: str = "fake workers"

    async def read(self) -> TargetState:
        return self.state

    async def apply(self, *, model: ModelRef, previous: ModelRef | None) -> None:
        if self.refuse:
            raise TargetError("403 Forbidden: patch deployments")
        self.calls.append(f"apply {model.version} after {previous.version if previous else None}")
        self.state = _state(
            model, previous=previous, settled=False, epoch=self.state.epoch.number + 1
        )

    async def wait(self, *, timeout_s: float) -> Progress:
        self.calls.append("wait")
        progress = self.outcomes.pop(0)
        if progress.done:
            self.state = replace(self.state, settled=True)
        return progress

    async def revert(self, *, failed: ModelRef, previous: ModelRef | None) -> None:
        self.calls.append(f"revert to {previous.version if previous else None}")
        self.state = _state(
            previous, failed_uri=failed.uri, settled=False, epoch=self.state.epoch.number + 1
        )


class NoTarget:
    """A target that must not be touched."""

    kind = "kubernetes"
    description = "untouchable"

    def __getattr__(self, name: str) -> Callable[..., object]:
        raise AssertionError(f"{name} must not be called")


@pytest.fixture
def reported() -> list[RolloutEvent]:
    return []


def _active(version: str) -> ActiveModel:
    return ActiveModel(
        model_name="shop",
        version=version,
        artifact_uri=f"s3://reco/models/shop/{version}",
        activated_at=T0,
        popular_items=[f"popular-of-{version}"],
        popular_scores=[1.0],
    )


def _records() -> MemoryRecords:
    """Redis as the controller left it: v1 active."""
    return MemoryRecords(actives={"shop": _active("v1")})


def _rollouts(
    target: object,
    reported: list[RolloutEvent],
    *,
    leading: Callable[[], bool] = lambda: True,
    records: MemoryRecords | None = None,
) -> Rollouts:
    async def report(event: RolloutEvent) -> None:
        reported.append(event)
        if records is not None:
            records.writes.append(f"report {event.status.value}")

    return Rollouts(
        targets=lambda name: target if name == "shop" else None,  # type: ignore[return-value]
        report=report,
        gate=GatePolicy(max_regression=0.05, baseline_margin=0.0),
        timeout_s=30,
        metrics=ControllerMetrics.create(),
        manifests=_manifests,
        max_clock_skew_s=300,
        leading=leading,
        activations=Activations(
            records=records if records is not None else _records(),
            popular=_popular,
            metrics=ControllerMetrics.create(),
        ),
    )


def _settled(active: ModelRef | None = ACTIVE, **changes: object) -> TargetState:
    state = _state(active, settled=True)
    return replace(state, **changes)  # type: ignore[arg-type]


def _statuses(reported: list[RolloutEvent]) -> list[str]:
    return [e.status.value for e in reported]


async def test_a_better_model_is_rolled_out_and_reported(reported: list[RolloutEvent]) -> None:
    target = FakeTarget(_settled(), outcomes=[Progress.complete("2 replicas updated")])
    decision = await _rollouts(target, reported).handle(_event())
    assert decision is Decision.ROLLED_OUT
    assert target.calls == ["apply v2 after v1", "wait"]
    assert _statuses(reported) == ["started", "succeeded"]
    started, succeeded = reported
    assert started.reason.startswith("passed: precision@10 0.2 vs active 0.2")
    assert succeeded.reason == "2 replicas updated"
    assert {(e.model_name, e.version, e.target) for e in reported} == {("shop", "v2", "kubernetes")}


async def test_the_first_model_has_no_previous_one(reported: list[RolloutEvent]) -> None:
    target = FakeTarget(_settled(active=None), outcomes=[Progress.complete("ok")])
    assert await _rollouts(target, reported).handle(_event()) is Decision.ROLLED_OUT
    assert target.calls == ["apply v2 after None", "wait"]


async def test_a_failed_rollout_goes_back_and_reports_both(reported: list[RolloutEvent]) -> None:
    target = FakeTarget(
        _settled(),
        outcomes=[Progress.failure("exceeded its progress deadline"), Progress.complete("back")],
    )
    decision = await _rollouts(target, reported).handle(_event())
    assert decision is Decision.FAILED
    assert target.calls == ["apply v2 after v1", "wait", "revert to v1", "wait"]
    assert _statuses(reported) == ["started", "failed", "rolled_back"]
    assert reported[1].reason == "exceeded its progress deadline"
    assert reported[2].reason == f"back to {ACTIVE.uri}: back"


async def test_a_rollback_that_does_not_settle_is_still_reported(
    reported: list[RolloutEvent],
) -> None:
    target = FakeTarget(
        _settled(), outcomes=[Progress.failure("deadline"), Progress.failure("stuck too")]
    )
    assert await _rollouts(target, reported).handle(_event()) is Decision.FAILED
    assert reported[-1].status is RolloutStatus.ROLLED_BACK
    assert "not settled yet: stuck too" in reported[-1].reason


async def test_a_model_below_the_gate_is_rejected_and_nothing_is_touched(
    reported: list[RolloutEvent],
) -> None:
    target = FakeTarget(_settled())
    decision = await _rollouts(target, reported).handle(_event(metrics=BAD))
    assert decision is Decision.REJECTED
    assert target.calls == []
    assert _statuses(reported) == ["rejected"]
    assert "50.0% below the active model's 0.2" in reported[0].reason


async def test_an_operator_can_force_a_model_past_the_gate(reported: list[RolloutEvent]) -> None:
    target = FakeTarget(_settled(), outcomes=[Progress.complete("ok")])
    decision = await _rollouts(target, reported).handle(_event(metrics=BAD), force=True)
    assert decision is Decision.ROLLED_OUT
    assert reported[0].reason.startswith("forced by an operator; gate: precision@10 0.1 is 50.0%")


async def test_a_duplicate_of_a_finished_rollout_does_nothing(
    reported: list[RolloutEvent],
) -> None:
    event = _event()
    target = FakeTarget(_settled(active=ModelRef.of(event)))
    assert await _rollouts(target, reported).handle(event) is Decision.DUPLICATE
    assert target.calls == []
    assert reported == []


async def test_the_same_event_twice_rolls_out_once(reported: list[RolloutEvent]) -> None:
    target = FakeTarget(_settled(), outcomes=[Progress.complete("ok")])
    rollouts = _rollouts(target, reported)
    assert await rollouts.handle(_event()) is Decision.ROLLED_OUT
    target.state = replace(target.state, settled=True)  # the Deployment controller finished
    assert await rollouts.handle(_event()) is Decision.DUPLICATE
    assert target.calls == ["apply v2 after v1", "wait"]
    assert _statuses(reported) == ["started", "succeeded"]


async def test_an_interrupted_rollout_is_resumed_with_its_recorded_previous_model(
    reported: list[RolloutEvent],
) -> None:
    event = _event(metrics=BAD)  # the gate was passed (or forced) before: not judged again
    unsettled = _state(ModelRef.of(event), previous=ACTIVE, settled=False)
    target = FakeTarget(unsettled, outcomes=[Progress.failure("deadline"), Progress.complete("")])
    assert await _rollouts(target, reported).handle(event) is Decision.FAILED
    assert target.calls == ["apply v2 after v1", "wait", "revert to v1", "wait"]
    assert reported[0].reason == "resumed"


async def test_a_rolled_back_model_is_not_retried_when_redelivered(
    reported: list[RolloutEvent],
) -> None:
    event = _event()
    target = FakeTarget(_settled(failed_uri=event.artifact_uri))
    assert await _rollouts(target, reported).handle(event) is Decision.ALREADY_FAILED
    assert target.calls == []
    assert reported == []


async def test_an_older_model_than_the_active_one_is_ignored(
    reported: list[RolloutEvent],
) -> None:
    target = FakeTarget(_settled())
    assert await _rollouts(target, reported).handle(_event("v0", age=2)) is Decision.STALE
    assert target.calls == []
    assert reported == []


async def test_force_overrides_staleness_and_a_previous_failure(
    reported: list[RolloutEvent],
) -> None:
    event = _event("v0", age=2)
    target = FakeTarget(_settled(failed_uri=event.artifact_uri), outcomes=[Progress.complete("ok")])
    assert await _rollouts(target, reported).handle(event, force=True) is Decision.ROLLED_OUT


async def test_a_model_without_a_target_is_ignored(reported: list[RolloutEvent]) -> None:
    other = msgspec.structs.replace(_event(), model_name="other")
    assert await _rollouts(NoTarget(), reported).handle(other) is Decision.UNMANAGED
    assert reported == []


async def test_a_permanent_refusal_is_reported_as_failed_not_retried(
    reported: list[RolloutEvent],
) -> None:
    target = FakeTarget(_settled(), refuse=True)
    assert await _rollouts(target, reported).handle(_event()) is Decision.FAILED
    assert _statuses(reported) == ["started", "failed"]
    assert "403 Forbidden" in reported[1].reason


async def test_a_transient_error_propagates_so_the_batch_is_retried(
    reported: list[RolloutEvent],
) -> None:
    class Unreachable(FakeTarget):
        async def read(self) -> TargetState:
            raise ConnectionError("API unreachable")

    with pytest.raises(ConnectionError):
        await _rollouts(Unreachable(_settled()), reported).handle(_event())
    assert reported == []


# --------------------------------------------------------------------------- trust


async def test_the_manifest_is_judged_not_the_event(reported: list[RolloutEvent]) -> None:
    """A producer cannot talk a bad model through the gate with good figures in the event."""
    lying = msgspec.structs.replace(_event(metrics=BAD), metrics=GOOD)
    target = FakeTarget(_settled())
    assert await _rollouts(target, reported).handle(lying) is Decision.REJECTED
    assert target.calls == []
    assert "50.0% below the active model's 0.2" in reported[0].reason


async def test_an_unpinned_event_is_rejected(reported: list[RolloutEvent]) -> None:
    unpinned = msgspec.structs.replace(_event(), manifest_sha256=msgspec.UNSET)
    target = FakeTarget(_settled())
    assert await _rollouts(target, reported).handle(unpinned) is Decision.REJECTED
    assert target.calls == []
    assert "not pinned" in reported[0].reason


async def test_a_manifest_that_differs_from_the_pin_is_rejected(
    reported: list[RolloutEvent],
) -> None:
    forged = msgspec.structs.replace(_event(), manifest_sha256="f" * 64)
    target = FakeTarget(_settled())
    assert await _rollouts(target, reported).handle(forged) is Decision.REJECTED
    assert "sha256" in reported[0].reason


async def test_a_manifest_of_another_version_is_rejected(reported: list[RolloutEvent]) -> None:
    """The event names v3 but pins v2's manifest: the announcement and the artifact disagree."""
    swapped = msgspec.structs.replace(_event("v2"), version="v3")
    target = FakeTarget(_settled())
    assert await _rollouts(target, reported).handle(swapped) is Decision.REJECTED
    assert "the event announced shop v3" in reported[0].reason


async def test_a_model_from_the_future_is_rejected_even_when_forced(
    reported: list[RolloutEvent],
) -> None:
    """A created_at in the year 9999 would make every later model stale."""
    target = FakeTarget(_settled())
    future = _event(created_at=datetime(9999, 1, 1, tzinfo=UTC))
    assert await _rollouts(target, reported).handle(future, force=True) is Decision.REJECTED
    assert target.calls == []
    assert "beyond the allowed clock skew of 300 s" in reported[0].reason


async def test_a_model_within_the_clock_skew_is_accepted(reported: list[RolloutEvent]) -> None:
    target = FakeTarget(_settled(), outcomes=[Progress.complete("ok")])
    soon = _event(created_at=datetime.now(UTC) + timedelta(seconds=60))
    assert await _rollouts(target, reported).handle(soon) is Decision.ROLLED_OUT


async def test_the_active_models_metrics_come_from_its_manifest_when_unrecorded(
    reported: list[RolloutEvent],
) -> None:
    _stored(_manifest("v1", metrics=GOOD, created_at=T0))
    target = FakeTarget(_settled(active=ModelRef(uri="s3://reco/models/shop/v1")))
    assert await _rollouts(target, reported).handle(_event(metrics=BAD)) is Decision.REJECTED
    assert "below the active model's 0.2" in reported[0].reason


async def test_an_active_model_without_readable_metrics_rejects_unless_forced(
    reported: list[RolloutEvent],
) -> None:
    unknown = _settled(active=ModelRef(uri="s3://elsewhere/unknown"))
    assert await _rollouts(FakeTarget(unknown), reported).handle(_event()) is Decision.REJECTED
    assert "has no readable metrics" in reported[0].reason
    forced = FakeTarget(unknown, outcomes=[Progress.complete("ok")])
    assert await _rollouts(forced, reported).handle(_event(), force=True) is Decision.ROLLED_OUT


async def test_a_leader_whose_lease_expired_writes_nothing(reported: list[RolloutEvent]) -> None:
    """A leader paused past its lease wakes up mid-decision: it must not patch (the follower
    may already act), and the batch stays uncommitted for the next leader."""
    target = FakeTarget(_settled())
    with pytest.raises(LeadershipLostError, match="the lease expired before the write"):
        await _rollouts(target, reported, leading=lambda: False).handle(_event())
    assert target.calls == []
    assert reported == []


async def test_nor_does_it_roll_back_once_its_lease_expired(reported: list[RolloutEvent]) -> None:
    leading = [True]

    class PausedDuringTheWait(FakeTarget):
        async def wait(self, *, timeout_s: float) -> Progress:
            leading[0] = False  # the process was stopped while the rollout progressed
            return await super().wait(timeout_s=timeout_s)

    target = PausedDuringTheWait(_settled(), outcomes=[Progress.failure("deadline")])
    rollouts = _rollouts(target, reported, leading=lambda: leading[0])
    with pytest.raises(LeadershipLostError, match="not going to report failed"):
        await rollouts.handle(_event())
    assert target.calls == ["apply v2 after v1", "wait"]
    assert _statuses(reported) == ["started"], "no verdict on a rollout it no longer owns"


# --------------------------------------------------------------------------- activation


async def test_the_active_record_switches_once_the_rollout_succeeded(
    reported: list[RolloutEvent],
) -> None:
    records = _records()
    target = FakeTarget(_settled(), outcomes=[Progress.complete("2 replicas updated")])
    assert await _rollouts(target, reported, records=records).handle(_event())
    assert records.writes == ["report started", "active v2", "report succeeded"]
    assert records.actives["shop"].popular_items == ["popular-of-v2"]
    assert records.actives["shop"].artifact_uri == "s3://reco/models/shop/v2"


async def test_a_failed_rollout_never_switches_the_active_record(
    reported: list[RolloutEvent],
) -> None:
    records = _records()
    target = FakeTarget(_settled(), outcomes=[Progress.failure("deadline"), Progress.complete("")])
    assert await _rollouts(target, reported, records=records).handle(_event()) is Decision.FAILED
    assert records.writes == ["report started", "report failed", "report rolled_back"]
    assert records.actives["shop"].version == "v1"


async def test_a_rollback_switches_the_record_back_when_it_was_lost_meanwhile(
    reported: list[RolloutEvent],
) -> None:
    records = MemoryRecords()  # Redis lost its data during the rollout
    target = FakeTarget(_settled(), outcomes=[Progress.failure("deadline"), Progress.complete("")])
    assert await _rollouts(target, reported, records=records).handle(_event()) is Decision.FAILED
    assert records.writes == ["report started", "report failed", "active v1", "report rolled_back"]


async def test_a_rollback_that_does_not_settle_leaves_the_record_alone(
    reported: list[RolloutEvent],
) -> None:
    records = MemoryRecords()
    target = FakeTarget(_settled(), outcomes=[Progress.failure("a"), Progress.failure("b")])
    assert await _rollouts(target, reported, records=records).handle(_event()) is Decision.FAILED
    assert "active v1" not in records.writes


async def test_a_duplicate_of_a_rollout_whose_controller_died_activates_it(
    reported: list[RolloutEvent],
) -> None:
    """The Deployment finished alone after the controller was killed: the redelivered event
    finds it settled and switches the record the dead run could not."""
    records = _records()
    event = _event()
    target = FakeTarget(_settled(active=ModelRef.of(event)))
    assert await _rollouts(target, reported, records=records).handle(event) is Decision.DUPLICATE
    assert records.writes == ["active v2"]


async def test_no_activation_once_the_lease_expired(reported: list[RolloutEvent]) -> None:
    leading = [True]
    records = _records()

    class PausedDuringTheWait(FakeTarget):
        async def wait(self, *, timeout_s: float) -> Progress:
            leading[0] = False
            return await super().wait(timeout_s=timeout_s)

    target = PausedDuringTheWait(_settled(), outcomes=[Progress.complete("ok")])
    rollouts = _rollouts(target, reported, leading=lambda: leading[0], records=records)
    with pytest.raises(LeadershipLostError, match="not going to activate"):
        await rollouts.handle(_event())
    assert records.actives["shop"].version == "v1"


async def test_an_activation_that_fails_does_not_undo_the_rollout(
    reported: list[RolloutEvent],
) -> None:
    """Redis down (or the artifact unreadable) when the rollout succeeded: the rollout stands,
    is reported, and the leader's next check writes the record."""

    class Unwritable(MemoryRecords):
        async def activate(self, active: ActiveModel, *, epoch: Epoch) -> bool:
            raise ConnectionError("Redis is down")

    records = Unwritable(actives={"shop": _active("v1")})
    target = FakeTarget(_settled(), outcomes=[Progress.complete("ok")])
    decision = await _rollouts(target, reported, records=records).handle(_event())
    assert decision is Decision.ROLLED_OUT
    assert _statuses(reported) == ["started", "succeeded"]
    assert records.actives["shop"].version == "v1"
