"""The active record follows the target, not a worker: written when the target is settled,
fenced by its epoch, kept in line by the leader (fake records and artifacts: our boundary)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from controller_fakes import MemoryRecords, PopularLists

from reco_common.artifact import REQUIRED_FILES, FileEntry, Manifest
from reco_common.contracts import EvalMetrics, ModelRef
from reco_common.redis_store import Epoch
from reco_controller.activation import Activations
from reco_controller.metrics import ControllerMetrics
from reco_controller.targets.base import RolloutTarget, TargetState

V1 = "s3://reco/models/shop/v1"
V2 = "s3://reco/models/shop/v2"


def _manifest(version: str, *, model_name: str = "shop") -> Manifest:
    return Manifest(
        model_name=model_name,
        version=version,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        data_snapshot="snap",
        params={},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
        n_users=1,
        n_items=1,
        dim=1,
        files={name: FileEntry(sha256="0" * 64, bytes=1) for name in REQUIRED_FILES},
    )


def _state(uri: str | None, *, settled: bool = True, epoch: int = 3) -> TargetState:
    active = ModelRef(uri=uri, manifest_sha256="a" * 64) if uri else None
    return TargetState(
        active=active, previous=None, failed_uri=None, settled=settled, epoch=Epoch("d", epoch)
    )


@dataclass
class Target:
    state: TargetState
    description: str = "fake workers"
    reads: int = 0

    async def read(self) -> TargetState:
        self.reads += 1
        return self.state


@dataclass
class Targets:
    targets: dict[str, RolloutTarget] = field(default_factory=dict)

    def __call__(self, model_name: str) -> RolloutTarget | None:
        return self.targets.get(model_name)

    def managed(self) -> dict[str, RolloutTarget]:
        return self.targets


@pytest.fixture
def popular() -> PopularLists:
    return PopularLists(
        {
            V1: _manifest("v1"),
            V2: _manifest("v2"),
            "s3://x/other": _manifest("v9", model_name="other"),
        }
    )


def _activations(records: MemoryRecords, popular: PopularLists) -> Activations:
    return Activations(records=records, popular=popular, metrics=ControllerMetrics.create())


async def test_a_settled_target_is_activated_from_its_verified_artifact(
    popular: PopularLists,
) -> None:
    records = MemoryRecords()
    assert await _activations(records, popular).settle("shop", _state(V2))
    active = records.actives["shop"]
    assert (active.version, active.artifact_uri, active.popular_items) == (
        "v2",
        V2,
        ["popular-of-v2"],
    )
    assert popular.reads == [(V2, "a" * 64)], "read pinned to the sha256 the target recorded"
    assert records.fences["shop"] == Epoch("d", 3)


async def test_nothing_is_written_while_a_rollout_is_in_flight(popular: PopularLists) -> None:
    records = MemoryRecords()
    assert not await _activations(records, popular).settle("shop", _state(V2, settled=False))
    assert records.writes == []
    assert popular.reads == []


async def test_a_record_already_right_is_not_read_again(popular: PopularLists) -> None:
    records = MemoryRecords()
    activations = _activations(records, popular)
    await activations.settle("shop", _state(V2))
    assert not await activations.settle("shop", _state(V2))
    assert len(popular.reads) == 1


async def test_a_writer_that_read_an_older_epoch_cannot_switch_the_record_back(
    popular: PopularLists,
) -> None:
    """The keeper read the target on v1 (epoch 3); meanwhile v2 rolled out (epoch 4)."""
    records = MemoryRecords()
    activations = _activations(records, popular)
    assert await activations.settle("shop", _state(V2, epoch=4))
    assert not await activations.settle("shop", _state(V1, epoch=3))
    assert records.actives["shop"].version == "v2"


async def test_an_artifact_of_another_model_is_refused(popular: PopularLists) -> None:
    records = MemoryRecords()
    with pytest.raises(Exception, match="is model 'other', not 'shop'"):
        await _activations(records, popular).settle("shop", _state("s3://x/other"))
    assert records.writes == []


async def test_the_keeper_restores_a_lost_record_and_leaves_a_model_being_rolled_out(
    popular: PopularLists,
) -> None:
    records = MemoryRecords()
    activations = _activations(records, popular)
    shop, busy = Target(_state(V1)), Target(_state(V2))
    targets = Targets({"shop": shop, "busy": busy})
    stop = asyncio.Event()
    async with activations.lock("busy"):
        keeper = asyncio.create_task(
            activations.keep(targets, leading=lambda: True, interval_s=0.01, stop=stop)
        )
        async with asyncio.timeout(5):
            while "shop" not in records.actives:
                await asyncio.sleep(0.01)
        assert busy.reads == 0
        del records.actives["shop"]  # Redis lost its data
        async with asyncio.timeout(5):
            while "shop" not in records.actives:
                await asyncio.sleep(0.01)
    stop.set()
    await keeper
    assert records.writes == ["active v1", "active v1"]


async def test_the_keeper_survives_a_failing_target_and_stops_when_not_leading(
    popular: PopularLists,
) -> None:
    class Broken(Target):
        async def read(self) -> TargetState:
            raise ConnectionError("workers unreachable")

    records = MemoryRecords()
    leading = [True]
    targets = Targets({"broken": Broken(_state(V1)), "shop": Target(_state(V1))})
    keeper = asyncio.create_task(
        _activations(records, popular).keep(
            targets, leading=lambda: leading[0], interval_s=0.01, stop=asyncio.Event()
        )
    )
    async with asyncio.timeout(5):
        while "shop" not in records.actives:
            await asyncio.sleep(0.01)
    leading[0] = False
    async with asyncio.timeout(5):
        await keeper
