"""The artifact's quantized, partitioned index over the item rows (ScaNN), for catalogs of a
million items where the worker answers small batches.

ScaNN (Google Research, ``scann`` on PyPI) partitions the rows with k-means (``leaves``), scores
a query's nearest leaves with 4-bit anisotropic product quantization (``score_ah``: two
dimensions a code, the loss weighted toward what ranks high by inner product) and re-scores the
best few thousand of them exactly (:data:`REORDERS`). Its cost per query does not depend on how many queries
share a batch, where the IVF lists' products (:mod:`reco_common.ivf`) need many queries per list
to run at BLAS speed: at 1M items it answers a batch of 20 ~2.5x cheaper than the lists, and a
batch of 500 about as cheaply (docs/benchmarks.md, "ScaNN at 1M items, session 10").

Built by the trainer (:meth:`ScannIndex.build`), stored as ScaNN's own serialized files
(:data:`FILES`: its config, codebook, partitioner, the rows' leaves and codes, the rows for the
re-score), each checksummed and listed in the manifest like every other file, plus
:data:`RECALL`: recall@100 against exact search at each count of searched leaves in
:data:`LEAF_SHARES` and each re-score depth in :data:`REORDERS`, measured on the model's own
queries (``reco_common.ivf.model_queries``), so that the worker searches as little as its
recall target needs on *this* catalog (:meth:`ScannIndex.search_for`): the shallowest re-score,
then the fewest leaves. ScaNN's training is not deterministic: of nine builds of one 1M-item
catalog, eight reached recall 0.98 at 225-300 leaves re-scoring 3,000, one at none (0.979 at
500 leaves), which the deeper re-score covers instead of an exact scan four times the cost. ScaNN's assets list is not stored: it is written at load from
:data:`FILES`, so that no stored path is followed. The files are read into memory (ScaNN does
not map them): ~300 MiB at 1M items x 65.

The rows are the model's ``[v, b]`` and a query is ``[q, 1]``: LightFM's inner product. Keys are
item rows; the worker re-scores what the index returns, so only the choice of candidates is
approximate.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float32]
Rows = npt.NDArray[np.intp]

# ScaNN's file names, and the asset type it reads each as (its config is found by name).
CONFIG = "scann_config.pb"
_ASSETS = {
    "ah_codebook.pb": "AH_CENTERS",
    "serialized_partitioner.pb": "PARTITIONER",
    "datapoint_to_token.npy": "TOKENIZATION_NPY",
    "hashed_dataset.npy": "AH_DATASET_NPY",
    "dataset.npy": "DATASET_NPY",
}
FILES = (CONFIG, *_ASSETS)
RECALL = "item_scann_recall.npy"
# Candidates scored by the codes and re-scored exactly, per query (at least the count asked):
# at 1M items x 65, 250 of 1,000 leaves, the lowest query family's recall@100 was 0.961 with
# 1,000, 0.979 with 2,000 and 0.983 with 3,000 (docs/benchmarks.md, session 10); the deeper one
# is measured too, for a build whose codes do not reach the target with the first.
REORDERS = (3000, 6000)
DIMS_PER_BLOCK = 2
AH_THRESHOLD = 0.2
TRAIN_ROWS = 131_072
# The counts of searched leaves the recall is measured at, as shares of the leaves.
LEAF_SHARES = (
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.175,
    0.2,
    0.225,
    0.25,
    0.275,
    0.3,
    0.35,
    0.4,
    0.5,
)
RECALL_K = 100


def _scann() -> Any:
    """ScaNN's Python side, imported on first use: the worker imports this module for
    :class:`Search` whatever its catalog, and only a ScaNN index needs ScaNN."""
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


class ScannIndexError(ValueError):
    """An index that does not fit the model it came with, or is not one."""


@dataclass(frozen=True, slots=True)
class Search:
    """How a query is searched: ``leaves`` searched, ``reorder`` candidates re-scored."""

    leaves: int
    reorder: int


@dataclass(frozen=True, slots=True)
class ScannIndex:
    searcher: Any
    size: int
    width: int
    recall: npt.NDArray[np.float64]
    """``[m, 3]``: searched leaves, re-scored candidates, recall@100 there (by re-score depth,
    then leaves, ascending)."""

    @staticmethod
    def build(
        items: FloatMatrix,
        *,
        leaves: int = 0,
        queries: Sequence[FloatMatrix] = (),
        threads: int = 0,
    ) -> ScannIndex:
        """The index of ``items`` (``[v, b]`` rows) in ``leaves`` partitions (0: ~sqrt(n)),
        with its recall at each count of :data:`LEAF_SHARES` and depth of :data:`REORDERS`
        measured on the families of ``queries`` (``[q, 1]``; the lowest family's recall is
        kept)."""
        n = len(items)
        if n < 2:
            raise ScannIndexError("a ScaNN index needs at least 2 items")
        leaves = max(2, min(n // 2, leaves or round(math.sqrt(n))))
        rows = np.ascontiguousarray(items, dtype=np.float32)
        builder = (
            _scann()
            .builder(rows, RECALL_K, "dot_product")
            .tree(
                num_leaves=leaves,
                num_leaves_to_search=max(1, leaves // 10),
                training_sample_size=min(n, TRAIN_ROWS),
            )
            .score_ah(DIMS_PER_BLOCK, anisotropic_quantization_threshold=AH_THRESHOLD)
            .reorder(REORDERS[0])
        )
        builder.set_n_training_threads(threads)
        searcher = builder.build()
        counts = sorted({max(1, round(share * leaves)) for share in LEAF_SHARES})
        grid = [Search(c, depth) for depth in REORDERS for c in counts]
        table = np.array([[g.leaves, g.reorder, 0.0] for g in grid], dtype=np.float64)
        index = ScannIndex(searcher, n, rows.shape[1], table)
        families = [q for q in queries if len(q)]
        if families:
            curves = [index.recall_of(items, family, grid) for family in families]
            index.recall[:, 2] = np.min(curves, axis=0)
        return index

    @staticmethod
    def open(directory: Path, recall: Path) -> ScannIndex:
        """The index in ``directory`` (its :data:`FILES`, checked by the caller) with its
        recall table; its size and width are those of its re-scoring rows."""
        scann = _scann()
        rows = np.load(directory / "dataset.npy", mmap_mode="r", allow_pickle=False)
        if rows.dtype != np.float32 or rows.ndim != 2:
            raise ScannIndexError(f"the ScaNN rows are {rows.dtype} {rows.shape}, not float32")
        assets = "".join(
            f'assets {{\n  asset_type: {kind}\n  asset_path: "{name}"\n}}\n'
            for name, kind in _ASSETS.items()
        )
        try:
            native = scann.scann_pybind.ScannNumpy(str(directory), assets)
        except (RuntimeError, ValueError) as exc:
            raise ScannIndexError(f"ScaNN could not load the index: {exc}") from None
        table = np.load(recall, allow_pickle=False)
        if table.dtype != np.float64:
            raise ScannIndexError("the ScaNN recall table has the wrong dtype")
        return ScannIndex(scann.ScannSearcher(native), rows.shape[0], rows.shape[1], table)

    def serialized(self) -> dict[str, bytes]:
        """ScaNN's files to store, by name (:data:`FILES`; the recall table is :attr:`recall`)."""
        with tempfile.TemporaryDirectory(prefix="scann-") as directory:
            self.searcher.serialize(directory, relative_path=True)
            return {name: (Path(directory) / name).read_bytes() for name in FILES}

    def search_for(self, target: float) -> Search | None:
        """The shallowest re-score, then the fewest leaves, that reached recall ``target`` on
        the trainer's queries (None if nothing measured did)."""
        reached = np.flatnonzero(self.recall[:, 2] >= target)
        if not len(reached):
            return None
        leaves, reorder, _ = self.recall[reached[0]]
        return Search(int(leaves), int(reorder))

    def check(self, n_items: int, width: int) -> None:
        """Refuse an index of another catalog (every load): its size, a query of ``width``
        answered with rows in range, a recall table of counts and recalls."""
        table = self.recall
        if (
            table.ndim != 2
            or table.shape[1] != 3
            or not len(table)
            or not np.isfinite(table).all()
            or bool((table[:, :2] < 1).any())
            or bool((np.diff(table[:, 1]) < 0).any())
            or bool(((np.diff(table[:, 0]) <= 0) & (np.diff(table[:, 1]) == 0)).any())
            or bool(((table[:, 2] < 0) | (table[:, 2] > 1)).any())
        ):
            raise ScannIndexError(
                "the ScaNN recall table is not a recall by re-score depth and searched leaves"
            )
        size = int(self.searcher.searcher.size())
        if size != n_items or self.size != n_items or self.width != width:
            raise ScannIndexError(
                f"the ScaNN index holds {size} items of {self.width}, not {n_items} of {width}"
            )
        found = self.search(np.ones((1, width), dtype=np.float32), 1, leaves=1)
        if bool((found >= n_items).any()):
            raise ScannIndexError("the ScaNN index answered rows outside the catalog")

    def search(
        self, queries: FloatMatrix, count: int, *, leaves: int, reorder: int = REORDERS[0]
    ) -> Rows:
        """Per query ``[q, 1]``, up to ``count`` candidate rows, best first (``-1`` pads):
        ``leaves`` searched, ``reorder`` (at least ``count``) re-scored exactly."""
        if queries.ndim != 2 or queries.shape[1] != self.width:  # ScaNN would crash on it
            raise ScannIndexError(f"queries of {queries.shape[1:]} for an index of {self.width}")
        count = min(count, self.size)
        found, _ = self.searcher.search_batched(
            np.ascontiguousarray(queries, dtype=np.float32),
            final_num_neighbors=count,
            pre_reorder_num_neighbors=max(reorder, count),
            leaves_to_search=leaves,
        )
        rows = np.full((len(queries), count), -1, dtype=np.intp)
        found = np.asarray(found)
        rows[:, : found.shape[1]] = found
        return rows

    def recall_of(
        self, items: FloatMatrix, queries: FloatMatrix, grid: Sequence[Search], k: int = RECALL_K
    ) -> npt.NDArray[np.float64]:
        """Recall@``k`` against exact search of ``queries`` at each search of ``grid``."""
        from reco_common.ivf import exact_top

        k = min(k, len(items))
        truth = exact_top(items, queries, k)
        recalls = []
        for g in grid:
            found = self.search(queries, k, leaves=g.leaves, reorder=g.reorder)
            hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
            recalls.append(hits / truth.size)
        return np.array(recalls, dtype=np.float64)
