"""Loading a model artifact: verified whole, or refused with a reason (file:// store, no network)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import msgspec
import numpy as np
import pytest
from worker_models import publish, random_arrays

from reco_common.artifact import ITEM_FACTORS, ArtifactError, ModelArrays
from reco_common.artifact_cache import VERIFIED_MARKER, VerifiedMark
from reco_common.contracts import decode, encode
from reco_common.settings import S3Settings
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import (
    ModelRefusedError,
    ModelStore,
    _freeze_survivors,
    load_serving_model,
)


def load(uri: str, tmp_path: Path) -> object:
    return load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache")


def test_a_model_loads_into_memory_with_its_identity(tmp_path: Path) -> None:
    uri = publish(tmp_path / "store", random_arrays(n_items=40, n_users=5, dim=4))
    model = load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache")
    assert (model.name, model.version, model.uri, model.n_items) == ("shop", "v1", uri, 40)
    assert not isinstance(model.items, np.memmap)
    assert model.items.flags.c_contiguous


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    uri = publish(tmp_path / "store", random_arrays(n_items=40, n_users=5, dim=4))
    (tmp_path / "store/models/shop/v1" / ITEM_FACTORS).write_bytes(b"garbage")
    with pytest.raises(ModelRefusedError, match="sha256"):
        load(uri, tmp_path)


def test_a_missing_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelRefusedError, match="no manifest"):
        load((tmp_path / "nothing-here").as_uri(), tmp_path)


def test_a_directory_without_a_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    np.save(tmp_path / "half" / ITEM_FACTORS, np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ModelRefusedError, match="not a model"):
        load((tmp_path / "half").as_uri(), tmp_path)


def _with_nan() -> ModelArrays:
    arrays = random_arrays(n_items=40, n_users=5, dim=4)
    arrays.item_factors[3, 1] = np.nan
    return arrays


def test_factors_with_nan_are_not_written(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="NaN"):
        publish(tmp_path / "store", _with_nan())


def _publish_unchecked(root: Path, arrays: ModelArrays, monkeypatch: pytest.MonkeyPatch) -> str:
    """An artifact whose pinned files hold what a writer's checks would refuse (a writer before
    them, or one with a bug): only the reader's checks stand between it and serving."""
    with monkeypatch.context() as patched:
        patched.setattr(ModelArrays, "check_values", lambda self: None)
        return publish(root, arrays)


def test_factors_with_nan_are_refused_at_every_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = _publish_unchecked(tmp_path / "store", _with_nan(), monkeypatch)
    for _ in range(2):  # no mark was written: the second load checks (and refuses) again
        with pytest.raises(ModelRefusedError, match="NaN"):
            load(uri, tmp_path)
    assert not list((tmp_path / "cache").rglob(VERIFIED_MARKER))


def test_a_cache_marked_before_the_value_checks_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache a worker of an older version marked (its ``.verified`` digest, or a mark of other
    value checks) is not trusted for the values: a NaN there is still refused."""
    uri = _publish_unchecked(tmp_path / "store", _with_nan(), monkeypatch)
    local = tmp_path / "cache" / "shop" / "v1"
    with monkeypatch.context() as patched:  # the older worker: files hashed, values unchecked
        patched.setattr(ModelArrays, "check_values", lambda self: None)
        load(uri, tmp_path)
    mark = decode(VerifiedMark, (local / VERIFIED_MARKER).read_bytes())
    (local / VERIFIED_MARKER).write_bytes(encode(msgspec.structs.replace(mark, value_checks=0)))
    with pytest.raises(ModelRefusedError, match="NaN"):
        load(uri, tmp_path)


def test_a_verified_cache_loads_without_the_value_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = publish(tmp_path / "store", random_arrays(n_items=40, n_users=5, dim=4))
    load(uri, tmp_path)

    def must_not_be_called(self: ModelArrays) -> None:
        raise AssertionError("must not be called: the cache was verified")

    monkeypatch.setattr(ModelArrays, "check_values", must_not_be_called)
    model = load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache")
    assert model.item_rows(["i3", "nope"]).tolist() == [3, -1]
    assert model.user_rows(["u4"]).tolist() == [4]


async def test_the_latest_request_wins_over_a_load_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback asks for the served v1 while v2 still loads (the controller's revert right
    after the failure of another worker): v2 must not be swapped in when its load ends."""
    v1 = publish(tmp_path / "store", random_arrays(n_items=40, n_users=5, dim=4))
    v2 = publish(tmp_path / "store", random_arrays(n_items=40, n_users=5, dim=4), version="v2")
    store = ModelStore(
        s3=S3Settings(), cache_dir=tmp_path / "cache", metrics=WorkerMetrics.create()
    )
    await store.load(v1)
    served = [store.current.uri]
    swap_in = store._swap_in
    monkeypatch.setattr(store, "_swap_in", lambda m: (served.append(m.uri), swap_in(m)))
    store.request(v2)
    store.request(v1)  # already served: supersedes the load of v2
    while store.status().loading is not None:
        await asyncio.sleep(0.01)
    assert served == [v1], "v2 never served, not even for a moment"
    store.request(v2)  # asked for again, it is swapped in
    while store.status().loading is not None:
        await asyncio.sleep(0.01)
    assert served == [v1, v2]


def test_a_swap_collects_cycles_that_an_earlier_swap_froze() -> None:
    """Each swap freezes what is alive; the next one must still collect the replaced model's
    reference cycles (a frozen object in a cycle is never freed by reference counting)."""

    class Part:
        other: object

    first, second = Part(), Part()
    first.other, second.other = second, first  # a cycle, as a replaced model could hold
    gone = weakref.ref(first)
    _freeze_survivors()  # the earlier swap, with ``first`` alive
    try:
        del first, second
        _freeze_survivors()  # the next swap
        assert gone() is None
    finally:
        gc.unfreeze()
