"""The artifact's approximate top-N index in the worker's selection: recall against exact
search, exclusions that never come back, the catalog-size threshold, and an index that is
corrupt or of another catalog refused (file:// store, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from worker_models import (
    publish,
    random_arrays,
    random_queries,
    random_rows,
)

from reco_common.ann import IndexParams, ItemIndex, Transform
from reco_common.artifact import ITEM_INDEX, ArtifactError, ModelArrays
from reco_common.settings import S3Settings
from reco_worker.model_store import ModelRefusedError, load_serving_model
from reco_worker.scoring import Histories, Policy, score
from reco_worker.topn import IndexUse, Pairs, TopSelector

N_ITEMS = 5_000
DIM = 16
INDEXED = IndexUse(min_items=0, expansion=256, max_fetch=1024)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return random_rows(N_ITEMS, DIM + 1)


@pytest.fixture(scope="module")
def index(items: np.ndarray) -> ItemIndex:
    return ItemIndex.build(items, IndexParams(connectivity=16, expansion_add=128), threads=1)


def test_the_build_keeps_the_transform_that_finds_more(items: np.ndarray) -> None:
    assert ItemIndex.build(items, IndexParams(), threads=1).transform is Transform.INNER_PRODUCT
    # A few directions dominate, as in trained factors: augmented rows find more.
    scale = np.append(np.arange(1, DIM + 1) ** -1.0, 1.0).astype(np.float32)
    long_and_short = items * scale
    index = ItemIndex.build(long_and_short, IndexParams(), threads=1)
    assert index.transform is Transform.AUGMENTED
    found = index.search(queries(20), 100, expansion=256)
    truth = np.argsort(-(queries(20) @ long_and_short.T), axis=1)[:, :100]
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    assert hits / truth.size >= 0.9


def queries(n: int, seed: int = 4) -> np.ndarray:
    return random_queries(n, DIM, seed)


def no_exclusions(n: int) -> list[np.ndarray]:
    return [np.empty(0, dtype=np.intp)] * n


def test_the_index_finds_nearly_all_of_the_exact_top_100(
    items: np.ndarray, index: ItemIndex
) -> None:
    q = queries(50)
    exact = TopSelector(items).select(q, no_exclusions(len(q)), 100)
    found = TopSelector(items, index=index, index_use=INDEXED).select(q, no_exclusions(50), 100)
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found.items, exact.items, strict=True))
    assert hits / exact.items.size >= 0.95
    # What it returns is scored exactly, best first, whatever the index's own order.
    rescored = np.einsum("bkd,bd->bk", items[found.items], q)
    np.testing.assert_allclose(found.scores, rescored, rtol=1e-5, atol=1e-6)
    assert (np.diff(found.scores, axis=1) <= 0).all()


def excluding_the_best(items: np.ndarray, q: np.ndarray) -> list[np.ndarray]:
    """Per query its own exact best 150 (what the index proposes first) and 50 random rows."""
    exact = TopSelector(items).select(q, no_exclusions(len(q)), 150)
    rng = np.random.default_rng(5)
    return [np.unique(np.concatenate([best, rng.integers(0, N_ITEMS, 50)])) for best in exact.items]


def test_an_excluded_item_never_appears(items: np.ndarray, index: ItemIndex) -> None:
    q = queries(40)
    exclude = excluding_the_best(items, q)
    selector = TopSelector(items, index=index, index_use=INDEXED)
    found = selector.select(q, exclude, 100)
    for j in range(len(q)):
        assert not np.isin(found.items[j], exclude[j]).any()
        assert len(np.unique(found.items[j])) == 100
    assert selector.indexed_queries == len(q)


def test_too_few_candidates_left_fall_back_to_exact(items: np.ndarray, index: ItemIndex) -> None:
    q = queries(10)
    exclude = excluding_the_best(items, q)
    # At most 128 asked for: the excluded best 150 leave none of them.
    selector = TopSelector(items, index=index, index_use=IndexUse(min_items=0, max_fetch=128))
    found = selector.select(q, exclude, 100)
    assert selector.exact_fallbacks == len(q)
    exact = TopSelector(items).select(q, exclude, 100)
    np.testing.assert_array_equal(found.items, exact.items)


def test_a_catalog_of_excluded_items_leaves_a_short_list(
    items: np.ndarray, index: ItemIndex
) -> None:
    everything_but_ten = [np.arange(10, N_ITEMS, dtype=np.intp)]
    found = TopSelector(items, index=index, index_use=INDEXED).select(
        queries(1), everything_but_ten, 100
    )
    assert sorted(found.items[0, : found.lengths()[0]].tolist()) == list(range(10))


class MustNotSearch:
    def search(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the index must not be searched below the threshold")


def test_below_the_threshold_the_selection_is_exact(items: np.ndarray, index: ItemIndex) -> None:
    q = queries(20)
    below = IndexUse(min_items=N_ITEMS + 1)
    fake: ItemIndex = MustNotSearch()  # type: ignore[assignment]
    exact = TopSelector(items).select(q, no_exclusions(len(q)), 100)
    found = TopSelector(items, index=fake, index_use=below).select(q, no_exclusions(20), 100)
    np.testing.assert_array_equal(found.items, exact.items)
    at = TopSelector(items, index=index, index_use=IndexUse(min_items=N_ITEMS))
    at.select(q, no_exclusions(len(q)), 100)
    assert at.indexed_queries == len(q)


def test_a_querys_candidates_do_not_depend_on_its_batch(
    items: np.ndarray, index: ItemIndex
) -> None:
    q = queries(30)
    rng = np.random.default_rng(6)
    exclude = [np.unique(rng.integers(0, N_ITEMS, int(rng.integers(0, 300)))) for _ in q]
    selector = TopSelector(items, index=index, index_use=INDEXED)
    together = selector.select(q, Pairs.of(exclude), 100)
    for j in range(len(q)):
        alone = selector.select(q[j : j + 1], [exclude[j]], 100)
        np.testing.assert_array_equal(alone.items[0], together.items[j])


def with_index(arrays: ModelArrays, items: np.ndarray | None = None) -> ModelArrays:
    factors = arrays.item_factors if items is None else items
    return ModelArrays(
        **{
            **{f: getattr(arrays, f) for f in ModelArrays.__dataclass_fields__},
            "item_index": ItemIndex.build(factors, IndexParams(), threads=1),
        }
    )


def test_an_artifact_with_an_index_loads_it_mapped_and_serves(tmp_path: Path) -> None:
    arrays = with_index(random_arrays(n_items=2_000, n_users=20, dim=8))
    uri = publish(tmp_path / "store", arrays)
    model = load_serving_model(
        uri, s3=S3Settings(), cache_dir=tmp_path / "cache", index_use=INDEXED
    )
    histories = Histories.of([("u1", []), ("u2", [])])
    ranked = score(model, histories, Policy(top_n=50))
    assert [len(r.items) for r in ranked] == [50, 50]
    assert model.selector.indexed_queries == 2


def test_a_corrupt_index_is_refused(tmp_path: Path) -> None:
    uri = publish(tmp_path / "store", with_index(random_arrays(n_items=300, n_users=5, dim=4)))
    path = tmp_path / "store/models/shop/v1" / ITEM_INDEX
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRefusedError, match=f"{ITEM_INDEX}: sha256 does not match"):
        load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache")


def test_an_index_of_another_catalog_is_refused() -> None:
    arrays = random_arrays(n_items=300, n_users=5, dim=4)
    with pytest.raises(ArtifactError, match="item index holds 200 rows"):
        with_index(arrays, arrays.item_factors[:200])
