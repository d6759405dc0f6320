"""Loading a model artifact: verified whole, or refused with a reason (file:// store, no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from worker_models import publish, random_arrays

from reco_common.artifact import ITEM_FACTORS
from reco_common.settings import S3Settings
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import ModelRefusedError, ModelStore, load_serving_model


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


def test_factors_with_nan_are_refused(tmp_path: Path) -> None:
    arrays = random_arrays(n_items=40, n_users=5, dim=4)
    arrays.item_factors[3, 1] = np.nan
    uri = publish(tmp_path / "store", arrays)
    with pytest.raises(ModelRefusedError, match="NaN"):
        load(uri, tmp_path)


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
