"""The artifact's inverted-file (IVF) index over the item rows: coarse clusters whose lists the
worker scores exactly, for catalogs of a million items.

Built by the trainer (:meth:`IvfIndex.build`), stored as four ``.npy`` files and a fifth,
optional one in the artifact (checksummed and listed in the manifest like every other file),
loaded by memory map:

- ``item_ivf_centroids.npy`` float32 ``[lists, d + 2]``: k-means centroids of the
  norm-equalised rows ``[v, b, sqrt(M^2 - |x|^2)]`` (``reco_common.ann.augmented``: every row
  has the largest norm ``M``, so a row's nearest centroid in L2 is also where the queries that
  rank it high by inner product look);
- ``item_ivf_offsets.npy`` int64 ``[lists + 1]``: list ``l`` is positions
  ``[offsets[l], offsets[l + 1])``;
- ``item_ivf_rows.npy`` int64 ``[n_items]``: the item row at each position (a permutation);
- ``item_ivf_factors.npy`` float32 ``[n_items, d + 1]``: the item rows in list order, so that a
  list is one contiguous slice (a second mapped copy of the factors: 248 MiB at 1M x 64,
  shared by the pods of a node through the page cache);
- ``item_ivf_recall.npy`` float64 ``[lists + 1]`` (optional; artifacts before session 9 have
  none): entry ``p`` is the recall@100 against exact search when ``p`` lists are probed,
  measured by the trainer on the model's own queries (:func:`recall_curve`), so that the
  worker probes as few lists as its recall target needs on *this* catalog
  (:meth:`IvfIndex.probes_for`).

A query ``[q, 1]`` probes the lists whose centroids are nearest (``|c|^2 - 2 q.c`` smallest,
the L2 distance to the query augmented with ``0``) and scores their rows exactly:
:meth:`IvfIndex.scan` returns every probed row scoring at or above the query's threshold.
Items in lists a query does not probe are missed (recall against exact search:
docs/benchmarks.md, "Approximate top-N ... session 7"). Chosen over faiss-cpu's
``IndexIVFFlat`` and the HNSW graph (:mod:`reco_common.ann`) by measurement there: one product
per list for all the batch's queries that probe it runs at BLAS speed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from reco_common.ann import augmented
from reco_common.contracts import DEFAULT_BLEND

logger = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float32]
Rows = npt.NDArray[np.intp]
Scores = npt.NDArray[np.float32]
Triples = tuple[Rows, Rows, Scores]
"""``(query, item row, score)`` of every kept pair."""

CENTROIDS = "item_ivf_centroids.npy"
OFFSETS = "item_ivf_offsets.npy"
ROWS = "item_ivf_rows.npy"
FACTORS = "item_ivf_factors.npy"
FILES = (CENTROIDS, OFFSETS, ROWS, FACTORS)
RECALL = "item_ivf_recall.npy"
# The recall curve: this many of the model's queries in each family (model_queries), each
# against its exact top RECALL_K (1M items: 1,536 queries, ~200 GFlop of products).
RECALL_QUERIES = 512
RECALL_K = 100
# k-means on this many sampled rows, this many Lloyd rounds (1M x 64: ~15 CPU-s in all).
TRAIN_ROWS = 131_072
ITERATIONS = 10
ASSIGN_CHUNK = 65_536
# A list's product is over a multiple of this many queries (the rest dummies), or over its one
# query: OpenBLAS 0.3.29's sgemm of 1,000 x 65 rows by 14 or 15 queries took 41-55 us, by 16
# queries 28-35 us, by 5-7 33-42 us, by 8 24-26 us; by 1 query 11-15 us (padded to 8: 2x that).
QUERY_STEP = 8


class IvfError(ValueError):
    """An index that does not fit the model it came with, or is not one."""


@dataclass(frozen=True, slots=True)
class IvfIndex:
    centroids: FloatMatrix
    offsets: npt.NDArray[np.int64]
    rows: npt.NDArray[np.int64]
    factors: FloatMatrix
    recall: npt.NDArray[np.float64] | None = None

    @staticmethod
    def build(
        items: FloatMatrix,
        *,
        lists: int = 0,
        seed: int = 0,
        queries: Sequence[FloatMatrix] = (),
    ) -> IvfIndex:
        """The index of ``items`` (``[v, b]`` rows) in ``lists`` lists (0: ~sqrt(n)); with
        families of ``queries`` (``[q, 1]`` rows, e.g. :func:`model_queries`) its recall curve
        too: at each count of probed lists, the lowest of the families' recalls."""
        n = len(items)
        lists = max(1, min(n, lists or round(math.sqrt(n))))
        x = augmented(items)
        rng = np.random.default_rng(seed)
        train = x[np.sort(rng.choice(n, min(n, TRAIN_ROWS), replace=False))]
        centroids = _kmeans(train, lists, rng)
        assign = _nearest(x, centroids)
        rows = np.argsort(assign, kind="stable").astype(np.int64)
        counts = np.bincount(assign, minlength=lists)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        factors = np.ascontiguousarray(items[rows], dtype=np.float32)
        index = IvfIndex(centroids, offsets, rows, factors)
        curves = [recall_curve(index, items, family) for family in queries if len(family)]
        if not curves:
            return index
        return replace(index, recall=np.min(curves, axis=0))

    @staticmethod
    def open(paths: dict[str, Path]) -> IvfIndex:
        """The index in the files ``paths`` (by name, :data:`FILES` and, when present,
        :data:`RECALL`), memory-mapped."""
        # Plain arrays over the maps: slicing a np.memmap runs Python code per slice, and the
        # search slices the factors once per probed list (~1,000 times a batch at 1M items).
        loaded = [
            np.load(paths[name], mmap_mode="r", allow_pickle=False).view(np.ndarray)
            for name in FILES
        ]
        centroids, offsets, rows, factors = loaded
        if (
            centroids.dtype != np.float32
            or offsets.dtype != np.int64
            or rows.dtype != np.int64
            or factors.dtype != np.float32
        ):
            raise IvfError("item IVF files have the wrong dtypes")
        recall = None
        if RECALL in paths:
            recall = np.load(paths[RECALL], allow_pickle=False)
            if recall.dtype != np.float64:
                raise IvfError("item IVF recall curve has the wrong dtype")
        return IvfIndex(centroids, offsets, rows, factors, recall)

    def arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """The files to store, by name."""
        files: dict[str, npt.NDArray[np.generic]] = {
            CENTROIDS: self.centroids,
            OFFSETS: self.offsets,
            ROWS: self.rows,
            FACTORS: self.factors,
        }
        if self.recall is not None:
            files[RECALL] = self.recall
        return files

    def probes_for(self, target: float) -> int | None:
        """The fewest lists whose probing reached recall ``target`` on the trainer's queries
        (all lists if none did); None without a curve."""
        if self.recall is None:
            return None
        reached = np.flatnonzero(self.recall >= target)
        return max(1, int(reached[0])) if len(reached) else self.lists

    @property
    def lists(self) -> int:
        return len(self.centroids)

    def check_shapes(self, n: int, width: int) -> None:
        """Refuse an index of another catalog by its arrays' headers (every load)."""
        if (
            self.centroids.ndim != 2
            or self.centroids.shape[1] != width + 1
            or self.offsets.shape != (self.lists + 1,)
            or self.rows.shape != (n,)
            or self.factors.shape != (n, width)
        ):
            raise IvfError(f"item IVF index does not fit a model of {n} items of {width}")
        if self.recall is not None:
            curve = self.recall
            if (
                curve.shape != (self.lists + 1,)
                or not np.isfinite(curve).all()
                or bool(((curve < 0) | (curve > 1)).any())
                or bool((np.diff(curve) < 0).any())
            ):
                raise IvfError("item IVF recall curve is not a recall by probed lists")

    def check_values(self, items: FloatMatrix) -> None:
        """Refuse an index whose values do not fit ``items`` (once per verified cache): list
        bounds, a permutation of the rows, the sorted factors equal to the model's rows in that
        order, finite centroids."""
        n = len(items)
        steps = np.diff(self.offsets)
        if self.offsets[0] != 0 or self.offsets[-1] != n or bool((steps < 0).any()):
            raise IvfError("item IVF offsets are not the bounds of its lists")
        in_range = bool(((self.rows >= 0) & (self.rows < n)).all())
        if not in_range or bool((np.bincount(self.rows, minlength=n) != 1).any()):
            raise IvfError("item IVF rows are not a permutation of the catalog")
        if not np.isfinite(self.centroids).all():
            raise IvfError("item IVF centroids contain NaN or infinity")
        for start in range(0, n, ASSIGN_CHUNK):
            part = self.rows[start : start + ASSIGN_CHUNK]
            if not np.array_equal(self.factors[start : start + ASSIGN_CHUNK], items[part]):
                raise IvfError("item IVF factors differ from the model's item rows")

    def check(self, items: FloatMatrix) -> None:
        """Both checks."""
        self.check_shapes(*items.shape)
        self.check_values(items)

    def distances(self, queries: FloatMatrix) -> npt.NDArray[np.float64]:
        """Per query ``[q, 1]`` and list, the order in which it probes them (smallest first):
        ``|c|^2 / 2 - q.c``, the L2 distance to the augmented query up to a constant."""
        # float64: float32 products round differently with the batch's shape, and a query's
        # lists must not depend on who shared its batch.
        c = self.centroids.astype(np.float64)
        distances: npt.NDArray[np.float64] = (
            0.5 * np.einsum("ij,ij->i", c, c) - queries.astype(np.float64) @ c[:, :-1].T
        )
        return distances

    def probes(self, queries: FloatMatrix, count: int) -> Rows:
        """Per query ``[q, 1]``, its ``count`` nearest lists (in no order)."""
        count = min(count, self.lists)
        nearest: Rows = np.argpartition(self.distances(queries), count - 1, axis=1)[:, :count]
        return nearest

    def scan(self, queries: FloatMatrix, thresholds: Scores, probes: int) -> Triples:
        """Every ``(query, item row, score)`` of the queries' probed lists that scores at or
        above the query's threshold: one product per list over the queries probing it.

        The batch's (list, query) pairs are grouped by list once, each list's group padded to
        a multiple of :data:`QUERY_STEP` with a query that never passes (threshold ``inf``),
        and the query rows gathered in that order: a list's product then reads one contiguous
        slice, and the loop over lists does only the product, the cut and the gather of the
        kept values; which query and item row a kept score belongs to is worked out for the
        whole batch after the loop."""
        probed = self.probes(queries, probes)
        groups = _Groups.of(probed, self.lists)
        # Positive thresholds: each query divided by its own, the cut is ``score >= 1`` against
        # one scalar, half the time of comparing each column with its query's threshold.
        scaled = bool((thresholds > 0).all()) and bool(np.isfinite(thresholds).all())
        divisors = thresholds[:, None] if scaled else np.ones((len(queries), 1))
        padded_queries = np.concatenate(
            [(queries / divisors).astype(np.float32), np.zeros((1, queries.shape[1]), np.float32)]
        )
        padded_thresholds = np.append(thresholds.astype(np.float32), np.float32(np.inf))
        grouped = padded_queries[groups.member]
        limits = padded_thresholds[groups.member]
        sizes = np.diff(self.offsets)
        lists = np.flatnonzero((groups.width > 0) & (sizes > 0))
        starts, widths = groups.start[lists], groups.width[lists]
        hits, values = [], []
        for first, width, lo, hi in zip(
            starts.tolist(),
            widths.tolist(),
            self.offsets[lists].tolist(),
            self.offsets[lists + 1].tolist(),
            strict=True,
        ):
            # rows x queries: 1.2-1.8x faster than queries x rows for the few queries of a
            # list (OpenBLAS, 1,000 x 65 rows, 4-64 queries).
            scores = self.factors[lo:hi] @ grouped[first : first + width].T
            kept = np.flatnonzero(scores >= (1.0 if scaled else limits[first : first + width]))
            hits.append(kept)
            values.append(scores.ravel()[kept])
        if not hits:
            empty = np.empty(0, dtype=np.intp)
            return empty, empty.copy(), np.empty(0, dtype=np.float32)
        hit = np.concatenate(hits)
        per_list = np.repeat(np.arange(len(lists)), [len(h) for h in hits])
        width_of = widths[per_list]
        item_at = self.offsets[lists][per_list] + hit // width_of
        query = groups.member[starts[per_list] + hit % width_of]
        found = np.concatenate(values)
        if scaled:
            found *= thresholds[query].astype(np.float32)
        return query, self.rows[item_at].astype(np.intp), found


def model_queries(
    users: FloatMatrix, items: FloatMatrix, count: int = RECALL_QUERIES, seed: int = 0
) -> list[FloatMatrix]:
    """Three families of ``count`` queries ``[q, 1]`` like the worker's, from the model alone:
    its users' rows (known users, nothing recent); item rows (a cold start led by one recent
    item); and the real-time policy's default blend (:data:`DEFAULT_BLEND`: ``0.25 u + 0.75 r``)
    with ``r`` the mean of 1 to 5 random items (each of ``u`` and ``r`` at the median user norm). Random recent items
    are harder than a shopper's own, which follow their taste. A model without users gets the
    item rows only."""
    rng = np.random.default_rng(seed)
    d = users.shape[1] - 1
    norms = np.linalg.norm(users[:, :-1].astype(np.float64), axis=1)
    scale = float(np.median(norms)) if len(norms) else 1.0

    def at_scale(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        lengths = np.linalg.norm(rows, axis=1, keepdims=True)
        scaled: npt.NDArray[np.float64] = rows * (scale / np.maximum(lengths, 1e-12))
        return scaled

    def with_bias(rows: npt.NDArray[np.float64]) -> FloatMatrix:
        return np.concatenate([rows, np.ones((len(rows), 1))], axis=1).astype(np.float32)

    single = at_scale(items[rng.integers(0, len(items), count), :d].astype(np.float64))
    if not len(users):  # no user rows: the item-led queries only
        return [with_bias(single)]
    known = users[rng.integers(0, len(users), count), :d].astype(np.float64)
    sizes = rng.integers(1, 6, count)
    picks = rng.integers(0, len(items), (count, 5))
    mask = np.arange(5)[None, :] < sizes[:, None]
    recent = (items[picks, :d].astype(np.float64) * mask[:, :, None]).sum(axis=1)
    blended = (1 - DEFAULT_BLEND) * known + DEFAULT_BLEND * at_scale(recent)
    return [with_bias(known), with_bias(single), with_bias(blended)]


def recall_curve(
    index: IvfIndex, items: FloatMatrix, queries: FloatMatrix, k: int = RECALL_K
) -> npt.NDArray[np.float64]:
    """Recall@``k`` against exact search of ``queries`` for every count of probed lists
    (entry ``p``: ``p`` lists): each exact top-``k`` item is found once its list's rank in
    the query's probe order is below ``p``."""
    k = min(k, len(items))
    position = np.empty(len(index.rows), dtype=np.int64)
    position[index.rows] = np.arange(len(index.rows))
    list_of = np.searchsorted(index.offsets, position, side="right") - 1
    found = np.zeros(index.lists + 1, dtype=np.float64)
    truth = exact_top(items, queries, k)
    chunk = max(1, (1 << 24) // len(items))
    for start in range(0, len(queries), chunk):
        q, top = queries[start : start + chunk], truth[start : start + chunk]
        order = np.argsort(index.distances(q), axis=1)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(index.lists)[None, :], axis=1)
        ranks = np.take_along_axis(rank, list_of[top], axis=1)
        found += np.bincount(ranks.ravel() + 1, minlength=index.lists + 1)
    curve: npt.NDArray[np.float64] = np.cumsum(found) / (len(queries) * k)
    return np.minimum(curve, 1.0)


def exact_top(items: FloatMatrix, queries: FloatMatrix, k: int) -> Rows:
    """Per query ``[q, 1]``, the rows of its exact top ``k`` items (in no order)."""
    k = min(k, len(items))
    chunk = max(1, (1 << 24) // len(items))  # 64 MiB of scores at a time
    parts = []
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ items.T
        parts.append(np.argpartition(scores, len(items) - k, axis=1)[:, len(items) - k :])
    top: Rows = np.concatenate(parts) if parts else np.empty((0, k), dtype=np.intp)
    return top


@dataclass(frozen=True, slots=True)
class _Groups:
    """A batch's (query, probed list) pairs grouped by list: list ``l``'s queries are
    ``member[start[l] : start[l] + width[l]]`` (ascending), padded with the query number
    ``len(queries)`` (a dummy) to ``width[l]``, a multiple of :data:`QUERY_STEP` (a list of
    one query is not padded)."""

    member: npt.NDArray[np.intp]
    start: npt.NDArray[np.intp]
    width: npt.NDArray[np.intp]

    @staticmethod
    def of(probed: Rows, lists: int) -> _Groups:
        n_queries, per_query = probed.shape
        flat = probed.ravel()
        by_list = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=lists)
        width = np.where(counts == 1, 1, -(-counts // QUERY_STEP) * QUERY_STEP)
        start = np.cumsum(width) - width
        rank = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        member = np.full(int(width.sum()), n_queries, dtype=np.intp)
        member[start[flat[by_list]] + rank] = by_list // per_query
        return _Groups(member, start.astype(np.intp), width.astype(np.intp))


def _kmeans(x: FloatMatrix, lists: int, rng: np.random.Generator) -> FloatMatrix:
    """Lloyd's k-means (L2) of ``x``, seeded with random rows; an emptied list is re-seeded."""
    centroids = x[rng.choice(len(x), lists, replace=False)].copy()
    for _ in range(ITERATIONS):
        assign = _nearest(x, centroids)
        sums = np.zeros(centroids.shape, dtype=np.float64)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=lists)
        centroids = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        empty = np.flatnonzero(counts == 0)
        centroids[empty] = x[rng.choice(len(x), len(empty), replace=False)]
    return centroids


def _nearest(x: FloatMatrix, centroids: FloatMatrix) -> Rows:
    """Each row's nearest centroid (L2)."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(x), dtype=np.intp)
    for start in range(0, len(x), ASSIGN_CHUNK):
        part = x[start : start + ASSIGN_CHUNK]
        out[start : start + ASSIGN_CHUNK] = np.argmax(part @ centroids.T - half_norms, axis=1)
    return out
