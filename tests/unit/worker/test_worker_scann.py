"""The artifact's ScaNN index in the worker's selection: every leaf searched with a re-score
deep enough gives the exact result, a few leaves most of it, exclusions never come back, a
query's list does not depend on its batch, the recall table chooses the leaves, the files
round-trip through an artifact (a corrupt or foreign one refused), and usearch loaded first
does not break ScaNN's loader (file:// store, no network)."""

from __future__ import annotations

import subprocess
import sys
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
from reco_common.ivf import model_queries
from reco_common.scann_index import RECALL, REORDERS, ScannIndex, ScannIndexError, Search
from reco_common.settings import S3Settings
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import ModelRefusedError, ModelStore, load_serving_model
from reco_worker.scoring import Histories, Policy, score
from reco_worker.topn import IndexUse, Pairs, TopSelector

N_ITEMS = 4_000
DIM = 16
LEAVES = 40


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return random_rows(N_ITEMS, DIM + 1)


@pytest.fixture(scope="module")
def index(items: np.ndarray) -> ScannIndex:
    users = (0.1 * np.random.default_rng(5).standard_normal((200, DIM + 1))).astype(np.float32)
    return ScannIndex.build(
        items, leaves=LEAVES, queries=model_queries(users, items, count=64), threads=1
    )


def searching(leaves: int) -> IndexUse:
    return IndexUse(min_items=0, probes=leaves)


def queries(n: int, seed: int = 4) -> np.ndarray:
    return random_queries(n, DIM, seed)


def exclusions(n: int) -> list[np.ndarray]:
    return random_exclusions(n, N_ITEMS)


def test_every_leaf_searched_gives_the_exact_selection(
    items: np.ndarray, index: ScannIndex
) -> None:
    # 3,000 re-scored of 4,000 items, every leaf: the codes' error cannot push a top-100 item
    # that far down.
    q = queries(30)
    exclude = exclusions(len(q))
    exact = TopSelector(items).select(q, exclude, 100)
    selector = TopSelector(items, scann=index, index_use=searching(LEAVES))
    found = selector.select(q, exclude, 100)
    np.testing.assert_array_equal(found.items, exact.items)
    np.testing.assert_array_equal(found.scores, exact.scores)
    assert selector.indexed_queries == len(q)
    assert selector.probes == LEAVES


def test_a_few_leaves_find_most_of_the_top_100_and_rescore_them_exactly(
    items: np.ndarray, index: ScannIndex
) -> None:
    q = queries(50)
    exact = TopSelector(items).select(q, Pairs.of([]), 100)
    found = TopSelector(items, scann=index, index_use=searching(LEAVES // 2)).select(
        q, Pairs.of([]), 100
    )
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found.items, exact.items, strict=True))
    assert 0.8 <= hits / exact.items.size < 1
    rescored = np.einsum("bkd,bd->bk", items[found.items], q)
    np.testing.assert_allclose(found.scores, rescored, rtol=1e-5, atol=1e-6)
    assert (np.diff(found.scores, axis=1) <= 0).all()


def test_an_excluded_item_never_appears(items: np.ndarray, index: ScannIndex) -> None:
    q = queries(40)
    best = TopSelector(items).select(q, Pairs.of([]), 150).items
    exclude = [np.unique(np.concatenate([b, e])) for b, e in zip(best, exclusions(40), strict=True)]
    selector = TopSelector(items, scann=index, index_use=searching(4))
    found = selector.select(q, exclude, 100)
    for j in range(len(q)):
        assert not np.isin(found.items[j], exclude[j]).any()
        assert len(np.unique(found.items[j])) == 100


def test_a_querys_list_does_not_depend_on_its_batch(items: np.ndarray, index: ScannIndex) -> None:
    q = queries(30)
    exclude = exclusions(len(q))
    selector = TopSelector(items, scann=index, index_use=searching(8))
    together = selector.select(q, Pairs.of(exclude), 100)
    for j in range(len(q)):
        alone = selector.select(q[j : j + 1], [exclude[j]], 100)
        np.testing.assert_array_equal(alone.items[0], together.items[j])


def test_the_recall_table_is_the_measured_recall_and_chooses_the_search(
    items: np.ndarray, index: ScannIndex
) -> None:
    leaves, depths, recalls = index.recall.T
    assert sorted(set(depths.tolist())) == list(REORDERS)
    shallow = depths == REORDERS[0]
    assert (np.diff(leaves[shallow]) > 0).all()
    assert leaves[shallow][-1] == LEAVES // 2
    assert recalls[shallow][0] < recalls[shallow][-1] <= 1
    # The table is a measurement: the same queries searched again give the same recall.
    users = (0.1 * np.random.default_rng(5).standard_normal((200, DIM + 1))).astype(np.float32)
    families = model_queries(users, items, count=64)
    grid = [Search(int(a), int(b)) for a, b in zip(leaves, depths, strict=True)]
    again = np.min([index.recall_of(items, f, grid) for f in families], axis=0)
    np.testing.assert_allclose(again, recalls)
    # The shallowest re-score first, then the fewest leaves.
    target = float(recalls[shallow][len(recalls[shallow]) // 2])
    chosen = TopSelector(items, scann=index, index_use=IndexUse(min_items=0, recall=target))
    expected = Search(int(leaves[np.argmax(recalls >= target)]), REORDERS[0])
    assert index.search_for(target) == expected
    assert chosen.probes == expected.leaves
    # A target no measured search reached: the catalog is searched exactly, with the same result.
    beyond = TopSelector(items, scann=index, index_use=IndexUse(min_items=0, recall=1.0))
    if recalls.max() < 1.0:
        assert beyond.probes == 0
        q = queries(10)
        exact = TopSelector(items).select(q, Pairs.of([]), 100)
        np.testing.assert_array_equal(beyond.select(q, Pairs.of([]), 100).items, exact.items)
        assert beyond.indexed_queries == 0


def test_a_query_of_another_width_is_refused_not_crashed(index: ScannIndex) -> None:
    with pytest.raises(ScannIndexError, match="queries of"):
        index.search(np.ones((1, DIM), dtype=np.float32), 10, leaves=4)


def test_an_artifact_with_a_scann_index_loads_it_and_serves(tmp_path: Path) -> None:
    arrays = random_arrays(n_items=2_000, n_users=40, dim=8)
    families = model_queries(arrays.user_factors, arrays.item_factors, count=40)
    index = ScannIndex.build(arrays.item_factors, queries=families, threads=1)
    uri = publish(tmp_path / "store", replace(arrays, item_scann=index))
    target = float(index.recall[len(index.recall) // 4, 2])
    use = IndexUse(min_items=0, recall=target)
    model = load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache", index_use=use)
    chosen = index.search_for(target)
    assert chosen is not None
    assert model.selector.probes == chosen.leaves > 0
    ranked = score(model, Histories.of([("u1", []), ("u2", [])]), Policy(top_n=50))
    assert [len(r.items) for r in ranked] == [50, 50]
    assert model.selector.indexed_queries == 2
    # Loaded from the artifact, the index answers as the one built.
    q = queries(5)[:, : arrays.item_factors.shape[1]]
    leaves = int(index.recall[-1, 0])
    loaded = model.selector._scann
    assert loaded is not None
    np.testing.assert_array_equal(
        loaded.search(q, 20, leaves=leaves), index.search(q, 20, leaves=leaves)
    )


def test_a_corrupt_or_missing_scann_file_is_refused(tmp_path: Path) -> None:
    arrays = random_arrays(n_items=300, n_users=5, dim=4)
    uri = publish(
        tmp_path / "store", replace(arrays, item_scann=ScannIndex.build(arrays.item_factors))
    )
    path = tmp_path / "store/models/shop/v1/hashed_dataset.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRefusedError, match=r"hashed_dataset\.npy: sha256 does not match"):
        load_serving_model(uri, s3=S3Settings(), cache_dir=tmp_path / "cache")


def test_a_scann_index_of_other_rows_or_a_bad_table_is_refused() -> None:
    arrays = random_arrays(n_items=300, n_users=5, dim=4)
    other = ScannIndex.build(arrays.item_factors[:200])
    with pytest.raises(ArtifactError, match="holds 200 items"):
        replace(arrays, item_scann=other)
    index = ScannIndex.build(arrays.item_factors)
    falling = index.recall[::-1].copy()
    with pytest.raises(ArtifactError, match="recall table"):
        replace(arrays, item_scann=replace(index, recall=falling))
    above = index.recall.copy()
    above[0, 2] = 1.5
    with pytest.raises(ArtifactError, match="recall table"):
        replace(arrays, item_scann=replace(index, recall=above))
    # An artifact of the first format (leaves and recall, no re-score depth) is refused.
    with pytest.raises(ArtifactError, match="recall table"):
        replace(arrays, item_scann=replace(index, recall=index.recall[:, [0, 2]].copy()))


async def test_the_leaves_searched_are_exported_for_the_model_served(tmp_path: Path) -> None:
    arrays = random_arrays(n_items=2_000, n_users=40, dim=8)
    families = model_queries(arrays.user_factors, arrays.item_factors, count=40)
    index = ScannIndex.build(arrays.item_factors, queries=families, threads=1)
    target = float(index.recall[len(index.recall) // 4, 2])
    chosen = index.search_for(target)
    assert chosen is not None
    store = ModelStore(
        s3=S3Settings(),
        cache_dir=tmp_path / "cache",
        metrics=WorkerMetrics.create(),
        index_use=IndexUse(min_items=0, recall=target),
    )
    await store.load(publish(tmp_path / "store", replace(arrays, item_scann=index)))
    assert REGISTRY.get_sample_value("reco_worker_index_probes") == chosen.leaves > 0


def test_usearch_imported_first_does_not_break_the_scann_loader(tmp_path: Path) -> None:
    """usearch links libstdc++ statically; imported before ScaNN it crashed ScaNN's loader
    (segfault). Every service import of usearch goes through reco_common.ann, which loads
    ScaNN first: a fresh interpreter importing it first must still load an index."""
    arrays = random_arrays(n_items=300, n_users=5, dim=4)
    index = ScannIndex.build(arrays.item_factors)
    for name, data in index.serialized().items():
        (tmp_path / name).write_bytes(data)
    np.save(tmp_path / RECALL, index.recall)
    script = (
        "import sys; from pathlib import Path; import reco_common.ann; "
        "from reco_common.scann_index import ScannIndex, RECALL; "
        "d = Path(sys.argv[1]); i = ScannIndex.open(d, d / RECALL); i.check(300, 5); "
        "print(i.size)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "300"
