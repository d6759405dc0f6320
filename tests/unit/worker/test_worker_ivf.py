"""The artifact's IVF index in the worker's selection: the probed lists scored exactly (all
lists probed: the exact result), recall with a few probed, exclusions that never come back,
the catalog-size threshold, and an index that is corrupt or of another catalog refused
(file:// store, no network)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from worker_models import (
    publish,
    random_arrays,
    random_exclusions,
    random_queries,
    random_rows,
)

from reco_common.artifact import ArtifactError
from reco_common.ivf import FACTORS, RECALL, ROWS, IvfError, IvfIndex, model_queries
from reco_common.settings import S3Settings
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import ModelRefusedError, ModelStore, load_serving_model
from reco_worker.scoring import Histories, Policy, score
from reco_worker.topn import ANN_PROBES, MARGIN, IndexUse, Pairs, TopSelector

N_ITEMS = 5_000
DIM = 16
LISTS = 64


def probing(lists: int) -> IndexUse:
    return IndexUse(min_items=0, probes=lists)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return random_rows(N_ITEMS, DIM + 1)


@pytest.fixture(scope="module")
def index(items: np.ndarray) -> IvfIndex:
    return IvfIndex.build(items, lists=LISTS)


def queries(n: int, seed: int = 4) -> np.ndarray:
    return random_queries(n, DIM, seed)


def exclusions(n: int) -> list[np.ndarray]:
    return random_exclusions(n, N_ITEMS)


def test_the_lists_partition_the_catalog_in_contiguous_slices(
    items: np.ndarray, index: IvfIndex
) -> None:
    assert index.lists == LISTS
    assert sorted(index.rows.tolist()) == list(range(N_ITEMS))
    for lst in range(LISTS):
        lo, hi = index.offsets[lst], index.offsets[lst + 1]
        np.testing.assert_array_equal(index.factors[lo:hi], items[index.rows[lo:hi]])
    index.check(items)


def brute_force_scan(
    index: IvfIndex, q: np.ndarray, thresholds: np.ndarray, probes: int
) -> set[tuple[int, int]]:
    """Every (query, item row) of the query's probed lists at or above its threshold, one
    query and one list at a time."""
    found = set()
    for j, lists in enumerate(index.probes(q, probes)):
        for lst in lists.tolist():
            lo, hi = int(index.offsets[lst]), int(index.offsets[lst + 1])
            scores = index.factors[lo:hi].astype(np.float64) @ q[j].astype(np.float64)
            found |= {(j, int(r)) for r in index.rows[lo:hi][scores >= thresholds[j]]}
    return found


@pytest.mark.parametrize("n_queries", [1, 7, 8, 9, 23])
@pytest.mark.parametrize("unbounded", [True, False], ids=["one-unbounded", "all-positive"])
def test_the_scan_keeps_every_probed_row_above_its_querys_threshold(
    items: np.ndarray, index: IvfIndex, n_queries: int, unbounded: bool
) -> None:
    # One list emptied (its rows moved to the next): lists of every size, one of none.
    offsets = index.offsets.copy()
    offsets[5] = offsets[4]
    uneven = replace(index, offsets=offsets)
    q = queries(n_queries, seed=n_queries)
    thresholds = np.quantile(q @ items.T, 0.97, axis=1).astype(np.float32)
    assert (thresholds > 0).all()  # each query scaled by its own threshold
    if unbounded:
        thresholds[0] = -np.inf  # every probed row: the thresholds compared as they are
    query, rows, scores = uneven.scan(q, thresholds, 9)
    # Scores within float32 rounding of the threshold may fall either side.
    near = {
        (j, r)
        for j, r in zip(*np.nonzero(np.abs(q @ items.T - thresholds[:, None]) < 1e-5), strict=True)
    }
    expected = brute_force_scan(uneven, q, thresholds, 9)
    assert set(zip(query.tolist(), rows.tolist(), strict=True)) - near == expected - near
    assert len(set(zip(query.tolist(), rows.tolist(), strict=True))) == len(query)
    np.testing.assert_allclose(scores, np.einsum("ij,ij->i", items[rows], q[query]), atol=1e-5)
    if unbounded:
        assert (query == 0).sum() == (np.diff(offsets)[uneven.probes(q[:1], 9)[0]]).sum()


def test_every_list_probed_gives_the_exact_selection(items: np.ndarray, index: IvfIndex) -> None:
    q = queries(40)
    exclude = exclusions(len(q))
    exact = TopSelector(items).select(q, exclude, 100)
    found = TopSelector(items, ivf=index, index_use=probing(LISTS)).select(q, exclude, 100)
    np.testing.assert_array_equal(found.items, exact.items)
    np.testing.assert_array_equal(found.scores, exact.scores)


def test_a_few_lists_find_most_of_the_top_100_and_rescore_them_exactly(
    items: np.ndarray, index: IvfIndex
) -> None:
    q = queries(50)
    exact = TopSelector(items).select(q, Pairs.of([]), 100)
    selector = TopSelector(items, ivf=index, index_use=probing(LISTS // 2))
    found = selector.select(q, Pairs.of([]), 100)
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found.items, exact.items, strict=True))
    assert hits / exact.items.size >= 0.9
    rescored = np.einsum("bkd,bd->bk", items[found.items], q)
    np.testing.assert_allclose(found.scores, rescored, rtol=1e-5, atol=1e-6)
    assert (np.diff(found.scores, axis=1) <= 0).all()
    assert selector.indexed_queries == len(q)


def test_an_excluded_item_never_appears(items: np.ndarray, index: IvfIndex) -> None:
    q = queries(40)
    best = TopSelector(items).select(q, Pairs.of([]), 150).items
    exclude = [np.unique(np.concatenate([b, e])) for b, e in zip(best, exclusions(40), strict=True)]
    # Its own best 150 excluded, 2 of 64 lists probed: many queries fall back to a full scan.
    selector = TopSelector(items, ivf=index, index_use=probing(2))
    found = selector.select(q, exclude, 100)
    for j in range(len(q)):
        assert not np.isin(found.items[j], exclude[j]).any()
        assert len(np.unique(found.items[j])) == 100
    assert selector.exact_fallbacks > 0


def test_a_querys_list_does_not_depend_on_its_batch(items: np.ndarray, index: IvfIndex) -> None:
    q = queries(30)
    exclude = exclusions(len(q))
    selector = TopSelector(items, ivf=index, index_use=probing(8))
    together = selector.select(q, Pairs.of(exclude), 100)
    for j in range(len(q)):
        alone = selector.select(q[j : j + 1], [exclude[j]], 100)
        np.testing.assert_array_equal(alone.items[0], together.items[j])


class MustNotScan:
    def scan(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("the IVF index must not be scanned below the threshold")


def test_below_the_threshold_the_selection_is_exact(items: np.ndarray) -> None:
    q = queries(20)
    fake: IvfIndex = MustNotScan()  # type: ignore[assignment]
    below = IndexUse(min_items=N_ITEMS + 1, probes=1)
    exact = TopSelector(items).select(q, Pairs.of([]), 100)
    found = TopSelector(items, ivf=fake, index_use=below).select(q, Pairs.of([]), 100)
    np.testing.assert_array_equal(found.items, exact.items)


def test_an_artifact_with_an_ivf_index_loads_it_mapped_and_serves(tmp_path: Path) -> None:
    arrays = random_arrays(n_items=2_000, n_users=20, dim=8)
    uri = publish(tmp_path / "store", replace(arrays, item_ivf=IvfIndex.build(arrays.item_factors)))
    model = load_serving_model(
        uri, s3=S3Settings(), cache_dir=tmp_path / "cache", index_use=probing(10)
    )
    histories = Histories.of([("u1", []), ("u2", [])])
    ranked = score(model, histories, Policy(top_n=50))
    assert [len(r.items) for r in ranked] == [50, 50]
    assert model.selector.indexed_queries == 2


def test_a_corrupt_ivf_file_is_refused(tmp_path: Path) -> None:
    arrays = random_arrays(n_items=300, n_users=5, dim=4)
    uri = publish(tmp_path / "store", replace(arrays, item_ivf=IvfIndex.build(arrays.item_factors)))
    path = tmp_path / "store/models/shop/v1" / ROWS
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRefusedError, match=f"{ROWS}: sha256 does not match"):
        load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache")


def test_an_ivf_index_of_other_rows_is_refused() -> None:
    arrays = random_arrays(n_items=300, n_users=5, dim=4)
    other = IvfIndex.build(arrays.item_factors[:200])
    with pytest.raises(ArtifactError, match="does not fit a model of 300 items"):
        replace(arrays, item_ivf=other)
    index = IvfIndex.build(arrays.item_factors)
    swapped = index.rows.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    with pytest.raises(IvfError, match="factors differ"):
        replace(index, rows=swapped).check(arrays.item_factors)
    with pytest.raises(IvfError, match="not a permutation"):
        replace(index, rows=np.zeros_like(index.rows)).check(arrays.item_factors)
    assert FACTORS in index.arrays()


def test_a_short_query_rescanned_hands_on_only_its_best_candidates(
    items: np.ndarray, index: IvfIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = queries(40)
    best = TopSelector(items).select(q, Pairs.of([]), 400).items
    # Its own best 400 excluded: the sampled threshold leaves queries short of candidates, and
    # their probed lists (4 of 64, ~310 rows) are scanned in full.
    exclude = [np.sort(b) for b in best]
    handed_on: list[np.ndarray] = []
    rescan = TopSelector._unthresholded

    def spy(self: TopSelector, *args: object) -> tuple[np.ndarray, ...]:
        found = rescan(self, *args)  # type: ignore[arg-type]
        handed_on.append(np.bincount(found[0]))
        return found

    monkeypatch.setattr(TopSelector, "_unthresholded", spy)
    selector = TopSelector(items, ivf=index, index_use=probing(4))
    found = selector.select(q, exclude, 100)
    rescans = selector.threshold_rescans  # the metric's count, of this batch
    monkeypatch.undo()
    alone = [selector.select(q[j : j + 1], [exclude[j]], 100).items[0] for j in range(len(q))]
    np.testing.assert_array_equal(found.items, np.stack(alone))
    assert selector.exact_fallbacks == 0
    rescanned = np.concatenate(handed_on)
    assert (rescanned > 0).sum() >= 5
    assert rescans == (rescanned > 0).sum()
    assert rescanned.max() == 100 + MARGIN


def brute_force_recall(
    index: IvfIndex, items: np.ndarray, q: np.ndarray, probes: int, k: int = 100
) -> float:
    """Of each query's exact top ``k`` (float64), the share in its ``probes`` nearest lists."""
    found = 0
    for j, lists in enumerate(index.probes(q, probes)):
        top = np.argsort(-(items.astype(np.float64) @ q[j].astype(np.float64)))[:k]
        held = np.concatenate(
            [index.rows[index.offsets[lst] : index.offsets[lst + 1]] for lst in lists]
        )
        found += len(np.intersect1d(top, held))
    return found / (len(q) * k)


def test_the_recall_curve_is_the_recall_of_each_count_of_probed_lists(items: np.ndarray) -> None:
    families = model_queries(queries(60, seed=9), items, count=60)
    assert [f.shape for f in families] == [(60, DIM + 1)] * 3
    assert all((f[:, -1] == 1).all() for f in families)
    q = families[2]
    index = IvfIndex.build(items, lists=LISTS, queries=[q])
    curve = index.recall
    assert curve is not None
    assert curve.shape == (LISTS + 1,)
    assert curve[0] == 0
    assert curve[-1] == pytest.approx(1.0)
    assert (np.diff(curve) >= 0).all()
    for probes in (1, 4, 16, 40):
        assert curve[probes] == pytest.approx(brute_force_recall(index, items, q, probes), abs=2e-3)
    assert 0 < curve[4] < curve[16] < 1
    # A model without user rows: the item-led queries only.
    assert [f.shape for f in model_queries(queries(0), items, count=8)] == [(8, DIM + 1)]
    # Several families: at each count, the lowest of their recalls.
    each = [IvfIndex.build(items, lists=LISTS, queries=[f]).recall for f in families]
    lowest = IvfIndex.build(items, lists=LISTS, queries=families).recall
    assert lowest is not None
    np.testing.assert_array_equal(lowest, np.min(each, axis=0))


def test_the_worker_probes_as_few_lists_as_its_recall_target_needs(items: np.ndarray) -> None:
    q = model_queries(queries(60, seed=9), items, count=60)[2]
    index = IvfIndex.build(items, lists=LISTS, queries=[q])
    curve = index.recall
    assert curve is not None
    for target in (0.5, 0.8, float(curve[LISTS // 3])):
        chosen = TopSelector(items, ivf=index, index_use=IndexUse(min_items=0, recall=target))
        assert 0 < chosen.probes <= LISTS // 3
        assert curve[chosen.probes] >= target
        assert chosen.probes == 1 or curve[chosen.probes - 1] < target
    fixed = TopSelector(items, ivf=index, index_use=IndexUse(min_items=0, probes=7, recall=0.5))
    assert fixed.probes == 7
    no_curve = replace(index, recall=None)
    assert TopSelector(items, ivf=no_curve, index_use=IndexUse(min_items=0)).probes == ANN_PROBES
    # What the curve promises, the served lists keep (the same queries, no exclusions).
    target = 0.8
    selector = TopSelector(items, ivf=index, index_use=IndexUse(min_items=0, recall=target))
    served = selector.select(q, Pairs.of([]), 100).items
    exact = TopSelector(items).select(q, Pairs.of([]), 100)
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(served, exact.items, strict=True))
    assert hits / exact.items.size >= target - 0.01
    # A target this isotropic catalog reaches only past a third of its lists: exact search.
    beyond = float(curve[LISTS // 3 + 1])
    assert beyond > curve[LISTS // 3]
    exactly = TopSelector(items, ivf=index, index_use=IndexUse(min_items=0, recall=beyond))
    assert exactly.probes == 0
    found = exactly.select(q, Pairs.of([]), 100)
    np.testing.assert_array_equal(found.items, exact.items)
    assert exactly.indexed_queries == 0


def test_an_artifact_carries_the_recall_curve_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    arrays = random_arrays(n_items=2_000, n_users=40, dim=8)
    q = model_queries(arrays.user_factors, arrays.item_factors, count=40)
    index = IvfIndex.build(arrays.item_factors, queries=q)
    assert index.recall is not None
    assert RECALL in index.arrays()
    uri = publish(tmp_path / "store", replace(arrays, item_ivf=index))
    target = float(index.recall[index.lists // 4])
    use = IndexUse(min_items=0, recall=target)
    model = load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache", index_use=use)
    assert 0 < model.selector.probes == index.probes_for(target)
    # Falling recall: not a curve of probed lists (checked at every load, before serving).
    falling = index.recall[::-1].copy()
    with pytest.raises(ArtifactError, match="recall curve"):
        replace(arrays, item_ivf=replace(index, recall=falling))
    with pytest.raises(ArtifactError, match="recall curve"):
        replace(arrays, item_ivf=replace(index, recall=index.recall[:-1].copy()))
    # An artifact without a curve (written before it) loads and probes the fixed default.
    uri = publish(
        tmp_path / "old", replace(arrays, item_ivf=replace(index, recall=None)), version="v2"
    )
    model = load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache2", index_use=use)
    assert model.selector.probes == ANN_PROBES


async def test_the_lists_probed_are_exported_for_the_model_served(tmp_path: Path) -> None:
    arrays = random_arrays(n_items=2_000, n_users=40, dim=8)
    families = model_queries(arrays.user_factors, arrays.item_factors, count=40)
    index = IvfIndex.build(arrays.item_factors, queries=families)
    assert index.recall is not None
    with_ivf = publish(tmp_path / "store", replace(arrays, item_ivf=index))
    exact = publish(tmp_path / "store", arrays, version="v2")
    metrics = WorkerMetrics.create()
    target = float(index.recall[index.lists // 4])
    store = ModelStore(
        s3=S3Settings(),
        cache_dir=tmp_path / "cache",
        metrics=metrics,
        index_use=IndexUse(min_items=0, recall=target),
    )
    probes = "reco_worker_index_probes"
    await store.load(with_ivf)
    assert REGISTRY.get_sample_value(probes) == index.probes_for(target) > 0
    await store.load(exact)
    assert REGISTRY.get_sample_value(probes) == 0
