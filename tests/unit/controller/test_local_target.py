"""The ``local`` target against fake workers (our own model-control endpoint, in memory)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from controller_fakes import MemoryRecords

from reco_common.artifact import ModelArrays, announcement, write_artifact
from reco_common.contracts import EvalMetrics, ModelRef
from reco_common.redis_store import Epoch
from reco_common.settings import S3Settings
from reco_common.storage import open_store
from reco_controller.targets.base import TargetError
from reco_controller.targets.local import LocalTarget
from reco_controller.targets.worker_client import ModelControlClient

TOKEN = "t0ken"
METRICS = EvalMetrics(model={"precision@10": 0.2}, baseline={"precision@10": 0.05})


class FakeWorker:
    """One worker's ``/v1/model`` as reco_worker.http serves it: loads in the background.

    A POSTed model becomes active after ``lag`` more GETs, or, with ``broken``, is reported as
    ``last_error`` instead; ``refuse`` answers the POST itself with that status.
    """

    def __init__(
        self, uri: str | None, *, lag: int = 0, refuse: int | None = None, broken: bool = False
    ) -> None:
        self.uri = uri
        self.lag = lag
        self.refuse = refuse
        self.broken = broken
        self.loading: str | None = None
        self.last_error: dict[str, str] | None = None
        self.posts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return httpx.Response(401, json={"error": {"code": "unauthorized"}})
            uri = json.loads(request.content)["model_uri"]
            self.posts.append(uri)
            if self.refuse:
                return httpx.Response(self.refuse, json={"error": {"message": f"no {uri}"}})
            self.loading = uri
            return httpx.Response(202, json=self._state())
        if self.loading is not None:
            if self.lag == 0:
                if self.broken:
                    self.last_error = {"model_uri": self.loading, "error": "sha256 mismatch"}
                else:
                    self.uri, self.last_error = self.loading, None
                self.loading = None
            self.lag -= 1
        return httpx.Response(200, json=self._state())

    def _state(self) -> dict[str, object]:
        version = self.uri.rsplit("/", 1)[-1] if self.uri else None
        return {
            "model_name": "shop",
            "version": version,
            "model_uri": self.uri,
            "loading": self.loading,
            "last_error": self.last_error and {**self.last_error, "at": "2026-11-01T00:00:00Z"},
        }


def _artifact(root: Path, version: str) -> str:
    rng = np.random.default_rng(0)
    arrays = ModelArrays(
        item_ids=["i0", "i1"],
        user_ids=["u0"],
        item_factors=rng.normal(size=(2, 3)).astype(np.float32),
        user_factors=rng.normal(size=(1, 3)).astype(np.float32),
        popular_items=["i1"],
        popular_scores=[1.0],
    )
    return write_artifact(
        open_store(root.as_uri()),
        model_name="shop",
        version=version,
        arrays=arrays,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        data_snapshot="snap",
        params={},
        metrics=METRICS,
        library_versions={},
    )


async def _target(
    workers: list[FakeWorker], token: str = TOKEN, *, memory: MemoryRecords | None = None
) -> tuple[LocalTarget, httpx.AsyncClient]:
    by_host = {f"w{i}": w for i, w in enumerate(workers)}
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: by_host[r.url.host](r)),
        headers={"Authorization": f"Bearer {token}"},
    )
    target = LocalTarget(
        model_name="shop",
        workers=[ModelControlClient(http=client, base_url=f"http://{h}:8081/") for h in by_host],
        s3=S3Settings(),
        records=memory if memory is not None else MemoryRecords(),
        poll_interval_s=0.001,
    )
    return target, client


async def test_the_active_model_is_read_from_the_workers_and_its_manifest(tmp_path: Path) -> None:
    v1 = _artifact(tmp_path, "v1")
    target, client = await _target([FakeWorker(v1), FakeWorker(v1)])
    async with client:
        state = await target.read()
    assert state.settled
    pin = announcement(open_store(v1, s3=S3Settings())).manifest_sha256
    assert isinstance(pin, str)
    assert state.active == ModelRef(
        uri=v1,
        version="v1",
        metrics=METRICS,
        created_at=datetime(2026, 11, 1, tzinfo=UTC),
        manifest_sha256=pin,  # pinned as read: a rollback to it must pass the workers' pin rule
    )


async def test_an_unreadable_manifest_leaves_only_what_the_worker_says() -> None:
    target, client = await _target([FakeWorker("file:///nowhere/v7")])
    async with client:
        state = await target.read()
    assert state.active == ModelRef(uri="file:///nowhere/v7", version="v7")


async def test_workers_that_disagree_are_not_settled() -> None:
    target, client = await _target([FakeWorker("file:///m/v1"), FakeWorker("file:///m/v2")])
    async with client:
        assert not (await target.read()).settled


async def test_apply_loads_everywhere_and_waits_for_every_worker() -> None:
    workers = [FakeWorker("file:///m/v1"), FakeWorker("file:///m/v1", lag=3)]
    target, client = await _target(workers)
    new = ModelRef(uri="file:///m/v2", version="v2")
    async with client:
        await target.apply(model=new, previous=ModelRef(uri="file:///m/v1"))
        progress = await target.wait(timeout_s=5)
        state = await target.read()
    assert progress.done, progress.message
    assert [w.posts for w in workers] == [["file:///m/v2"], ["file:///m/v2"]]
    assert state.previous == ModelRef(uri="file:///m/v1")


async def test_a_worker_that_never_switches_times_out() -> None:
    target, client = await _target([FakeWorker("file:///m/v1", lag=10**9)])
    async with client:
        await target.apply(model=ModelRef(uri="file:///m/v2"), previous=None)
        progress = await target.wait(timeout_s=0.05)
    assert progress.failed
    assert "1 of 1 workers not serving file:///m/v2" in progress.message


async def test_a_refused_model_fails_and_revert_goes_back_everywhere() -> None:
    workers = [FakeWorker("file:///m/v1"), FakeWorker("file:///m/v1", refuse=422)]
    target, client = await _target(workers)
    v1, v2 = ModelRef(uri="file:///m/v1"), ModelRef(uri="file:///m/v2")
    async with client:
        await target.apply(model=v2, previous=v1)
        failed = await target.wait(timeout_s=5)
        workers[1].refuse = None
        await target.revert(failed=v2, previous=v1)
        back = await target.wait(timeout_s=5)
        state = await target.read()
    assert failed.failed
    assert "w1:8081/v1/model refused file:///m/v2: 422" in failed.message
    assert back.done
    assert state.failed_uri == v2.uri
    assert state.active is not None
    assert state.active.uri == v1.uri


async def test_a_model_a_worker_cannot_load_fails_without_waiting_for_the_timeout() -> None:
    workers = [FakeWorker("file:///m/v1"), FakeWorker("file:///m/v1", lag=2, broken=True)]
    target, client = await _target(workers)
    async with client:
        await target.apply(model=ModelRef(uri="file:///m/v2"), previous=None)
        progress = await target.wait(timeout_s=60)
    assert progress.failed
    assert progress.message == "http://w1:8081/v1/model: sha256 mismatch"


async def test_an_old_failure_of_the_same_model_does_not_count_while_it_is_retried() -> None:
    worker = FakeWorker("file:///m/v1", lag=2)
    worker.last_error = {"model_uri": "file:///m/v2", "error": "S3 was down"}
    target, client = await _target([worker])
    async with client:
        await target.apply(model=ModelRef(uri="file:///m/v2"), previous=None)
        progress = await target.wait(timeout_s=60)
    assert progress.done, progress.message


async def test_revert_without_a_previous_model_is_refused() -> None:
    target, client = await _target([FakeWorker("file:///m/v2")])
    async with client:
        with pytest.raises(TargetError, match="no previous model"):
            await target.revert(failed=ModelRef(uri="file:///m/v2"), previous=None)


async def test_a_wrong_token_is_a_permanent_error() -> None:
    target, client = await _target([FakeWorker("file:///m/v1")], token="wrong")
    async with client:
        with pytest.raises(TargetError, match="401"):
            await target.apply(model=ModelRef(uri="file:///m/v2"), previous=None)


# --------------------------------------------------------------------------- persisted state


async def test_an_interrupted_rollout_is_known_to_the_next_controller() -> None:
    """The controller dies after telling the workers: a new one (a new target on the same
    Redis) knows what was asked, what ran before, and that it is not settled yet."""
    memory = MemoryRecords()
    workers = [FakeWorker("file:///m/v1"), FakeWorker("file:///m/v1", lag=10**9)]
    target, client = await _target(workers, memory=memory)
    v1, v2 = ModelRef(uri="file:///m/v1", version="v1"), ModelRef(uri="file:///m/v2")
    async with client:
        await target.apply(model=v2, previous=v1)
    restarted, client = await _target(workers, memory=memory)
    async with client:
        state = await restarted.read()
    assert (state.active, state.previous, state.settled) == (v2, v1, False)
    assert state.epoch == Epoch("local", 1)


async def test_a_rolled_back_model_is_remembered_by_the_next_controller() -> None:
    memory = MemoryRecords()
    workers = [FakeWorker("file:///m/v1", refuse=422)]
    target, client = await _target(workers, memory=memory)
    v1, v2 = ModelRef(uri="file:///m/v1"), ModelRef(uri="file:///m/v2")
    async with client:
        await target.apply(model=v2, previous=v1)
        workers[0].refuse = None
        await target.revert(failed=v2, previous=v1)
        await target.wait(timeout_s=5)
    restarted, client = await _target(workers, memory=memory)
    async with client:
        state = await restarted.read()
    assert (state.active, state.failed_uri, state.settled) == (v1, v2.uri, True)
    assert state.epoch == Epoch("local", 2)


async def test_a_state_written_meanwhile_by_a_newer_run_is_not_overwritten() -> None:
    memory = MemoryRecords()
    target, client = await _target([FakeWorker("file:///m/v1")], memory=memory)
    memory.fences["shop"] = Epoch("local", 9)  # written after this target read epoch 0
    async with client:
        with pytest.raises(TargetError, match="a newer rollout state"):
            await target.apply(model=ModelRef(uri="file:///m/v2"), previous=None)
