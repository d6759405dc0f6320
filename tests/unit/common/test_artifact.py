from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from reco_common import artifact, artifact_cache
from reco_common.artifact import (
    ITEM_FACTORS,
    ITEM_ID_KEYS,
    ITEM_ID_ROWS,
    USER_ID_KEYS,
    USER_ID_ROWS,
    USER_ITEMS_INDICES,
    USER_ITEMS_INDPTR,
    ArtifactError,
    ModelArrays,
    UserItems,
    write_artifact,
)
from reco_common.artifact_cache import VERIFIED_MARKER, StoredIds, load_artifact
from reco_common.contracts import EvalMetrics
from reco_common.id_lookup import IdLookup
from reco_common.storage import ObjectStore, open_store


def _arrays(n_users: int = 3, n_items: int = 5, dim: int = 4) -> ModelArrays:
    rng = np.random.default_rng(0)
    return ModelArrays(
        item_ids=[f"i{i}" for i in range(n_items)],
        user_ids=[f"u{u}" for u in range(n_users)],
        item_factors=rng.normal(size=(n_items, dim + 1)).astype(np.float32),
        user_factors=rng.normal(size=(n_users, dim + 1)).astype(np.float32),
        popular_items=["i1", "i0"],
        popular_scores=[2.0, 1.0],
    )


def _write(store: ObjectStore, version: str = "v1") -> str:
    return write_artifact(
        store,
        model_name="shop",
        version=version,
        arrays=_arrays(),
        created_at=datetime.now(UTC),
        data_snapshot="snap-1",
        params={"loss": "warp"},
        metrics=EvalMetrics(model={"precision@10": 0.2}, baseline={"precision@10": 0.1}),
        library_versions={"lightfm": "1.17"},
    )


def test_artifact_round_trip_verifies_and_memory_maps(tmp_path: Path) -> None:
    uri = _write(open_store((tmp_path / "store").as_uri()))
    loaded = load_artifact(open_store(uri), cache_dir=tmp_path / "cache")
    assert loaded.manifest.n_items == 5
    assert loaded.manifest.dim == 4
    assert isinstance(loaded.arrays.item_factors, np.memmap)
    np.testing.assert_array_equal(loaded.arrays.item_factors, _arrays().item_factors)
    assert loaded.arrays.popular_items == ["i1", "i0"]


def test_artifacts_are_immutable(tmp_path: Path) -> None:
    store = open_store((tmp_path / "store").as_uri())
    _write(store)
    with pytest.raises(ArtifactError, match="immutable"):
        _write(store)


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    uri = _write(open_store((tmp_path / "store").as_uri()))
    damaged = tmp_path / "store" / "models" / "shop" / "v1" / ITEM_FACTORS
    damaged.write_bytes(damaged.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(open_store(uri), cache_dir=tmp_path / "cache")


def test_a_directory_without_manifest_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no manifest"):
        load_artifact(open_store((tmp_path / "empty").as_uri()), cache_dir=tmp_path / "c")


def test_shapes_are_checked() -> None:
    with pytest.raises(ArtifactError, match="float32"):
        ModelArrays(
            item_ids=["a"],
            user_ids=[],
            item_factors=np.zeros((2, 3), dtype=np.float32),
            user_factors=np.zeros((0, 3), dtype=np.float32),
            popular_items=[],
            popular_scores=[],
        )


def test_training_interactions_round_trip_checksummed(tmp_path: Path) -> None:
    user_items = UserItems(
        indptr=np.array([0, 2, 2, 3], dtype=np.int64), indices=np.array([0, 4, 1], dtype=np.int32)
    )
    store = open_store((tmp_path / "store").as_uri())
    uri = write_artifact(
        store,
        model_name="shop",
        version="v1",
        arrays=dataclasses.replace(_arrays(), user_items=user_items),
        created_at=datetime.now(UTC),
        data_snapshot="snap-1",
        params={},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
    )
    loaded = load_artifact(open_store(uri), cache_dir=tmp_path / "cache")
    assert {USER_ITEMS_INDPTR, USER_ITEMS_INDICES} <= loaded.manifest.files.keys()
    assert loaded.arrays.user_items is not None
    assert loaded.arrays.user_items.of(0).tolist() == [0, 4]
    assert loaded.arrays.user_items.of(1).tolist() == []
    assert loaded.arrays.user_items.of(2).tolist() == [1]
    damaged = tmp_path / "store" / "models" / "shop" / "v1" / USER_ITEMS_INDICES
    damaged.write_bytes(damaged.read_bytes()[:-4] + b"\0\0\0\3")
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(open_store(uri), cache_dir=tmp_path / "cache2")


def test_an_artifact_without_training_interactions_loads_without_them(tmp_path: Path) -> None:
    uri = _write(open_store((tmp_path / "store").as_uri()))
    assert load_artifact(open_store(uri), cache_dir=tmp_path / "cache").arrays.user_items is None


def test_training_interactions_must_index_the_catalog() -> None:
    arrays = dataclasses.replace(
        _arrays(),
        user_items=UserItems(
            indptr=np.array([0, 1, 1, 1], dtype=np.int64), indices=np.array([9], dtype=np.int32)
        ),
    )
    with pytest.raises(ArtifactError, match="item rows"):
        arrays.check_values()


def _must_not_hash(path: Path) -> str:
    raise AssertionError(f"must not be called: {path} was verified already")


def test_a_cache_verified_once_is_mapped_without_hashing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = _write(open_store((tmp_path / "bucket").as_uri()))
    first = load_artifact(open_store(uri), cache_dir=tmp_path / "shared")
    marker = tmp_path / "shared" / "shop" / "v1" / VERIFIED_MARKER
    assert marker.is_file()
    monkeypatch.setattr(artifact_cache, "file_sha256", _must_not_hash)
    again = load_artifact(open_store(uri), cache_dir=tmp_path / "shared")
    assert np.array_equal(again.arrays.item_factors, first.arrays.item_factors)


@pytest.mark.parametrize("damage", ["marker of another manifest", "file cut short"])
def test_a_cache_that_does_not_match_its_marker_is_verified_again(
    tmp_path: Path, damage: str
) -> None:
    uri = _write(open_store((tmp_path / "bucket").as_uri()))
    load_artifact(open_store(uri), cache_dir=tmp_path / "shared")
    local = tmp_path / "shared" / "shop" / "v1"
    if damage == "file cut short":
        data = (local / ITEM_FACTORS).read_bytes()
        (local / ITEM_FACTORS).write_bytes(data[:-8])
    else:
        (local / VERIFIED_MARKER).write_text("0" * 64)
    loaded = load_artifact(open_store(uri), cache_dir=tmp_path / "shared")
    assert loaded.arrays.item_factors.shape == (5, 5)  # downloaded again, then verified
    assert (local / VERIFIED_MARKER).read_text() != "0" * 64


def test_id_lookups_are_written_and_mapped_and_user_ids_left_undecoded(tmp_path: Path) -> None:
    uri = _write(open_store((tmp_path / "store").as_uri()))
    loaded = load_artifact(open_store(uri), cache_dir=tmp_path / "cache")
    assert {ITEM_ID_KEYS, ITEM_ID_ROWS, USER_ID_KEYS, USER_ID_ROWS} <= loaded.manifest.files.keys()
    arrays = loaded.arrays
    assert arrays.item_lookup is not None
    assert arrays.user_lookup is not None
    assert isinstance(arrays.item_lookup.keys, np.memmap)
    assert arrays.item_lookup.rows_of(["i4", "i0", "x"]).tolist() == [4, 0, -1]
    assert arrays.user_lookup.rows_of(["u2"]).tolist() == [2]
    assert isinstance(arrays.user_ids, StoredIds)
    assert len(arrays.user_ids) == 3
    assert list(arrays.user_ids) == ["u0", "u1", "u2"]  # decoded when asked for


def test_an_artifact_without_id_lookups_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As written before the lookups: the ids come from the JSON alone."""
    monkeypatch.setattr(artifact, "with_lookups", lambda arrays: arrays)
    uri = _write(open_store((tmp_path / "store").as_uri()))
    loaded = load_artifact(open_store(uri), cache_dir=tmp_path / "cache")
    assert ITEM_ID_KEYS not in loaded.manifest.files
    assert loaded.arrays.item_lookup is None
    assert loaded.arrays.user_ids == ["u0", "u1", "u2"]


def test_a_lookup_that_is_not_the_ids_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = dataclasses.replace(
        _arrays(), item_lookup=IdLookup.build(["i1", "i0", "i2", "i3", "i4"])
    )
    with pytest.raises(ArtifactError, match="item ids: the lookup does not hold"):
        write_artifact(
            open_store((tmp_path / "a").as_uri()),
            model_name="shop",
            version="v1",
            arrays=wrong,
            **_manifest_fields(),
        )
    with monkeypatch.context() as patched:  # a writer without the check
        patched.setattr(ModelArrays, "check_values", lambda self: None)
        uri = write_artifact(
            open_store((tmp_path / "b").as_uri()),
            model_name="shop",
            version="v1",
            arrays=wrong,
            **_manifest_fields(),
        )
    with pytest.raises(ArtifactError, match="item ids: the lookup does not hold"):
        load_artifact(open_store(uri), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "shop" / "v1" / VERIFIED_MARKER).exists()


def test_neighbour_scores_must_be_finite() -> None:
    n = len(_arrays().item_ids)
    arrays = dataclasses.replace(
        _arrays(),
        neighbours=artifact.ItemNeighbours(
            rows=np.full((n, 1), -1, dtype=np.int32),
            scores=np.full((n, 1), np.inf, dtype=np.float32),
        ),
    )
    with pytest.raises(ArtifactError, match="neighbour_scores contain NaN or infinity"):
        arrays.check_values()


def _manifest_fields() -> dict[str, object]:
    return {
        "created_at": datetime.now(UTC),
        "data_snapshot": "snap-1",
        "params": {},
        "metrics": EvalMetrics(model={}, baseline={}),
        "library_versions": {},
    }
