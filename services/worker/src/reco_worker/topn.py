"""Top-N by inner product for a batch of queries: exact, or from the artifact's approximate
index on catalogs of a million items.

Three stages, each vectorised over the whole batch (no Python loop per item or per query):

1. *Candidates*, ``n + MARGIN`` per query, in float32. Small catalogs: one matrix product and
   a cut of each row (:func:`top_columns`: ``argpartition`` over the maxima of interleaved
   groups of columns, then over the best groups' columns). Large catalogs: a per-query
   threshold is taken from a fixed random sample of items so that, with overwhelming probability, a few hundred items score above it; the
   catalog is scored in cache-sized blocks and only items above the threshold are kept. A query
   left with too few candidates is scored in full, so the result is exact either way.
   *IVF* (the artifact has an inverted-file index, :mod:`reco_common.ivf`, and the catalog
   reaches :attr:`IndexUse.min_items`): as the large catalogs, but only the lists a query
   probes are scored (one product per list for the batch's queries probing it); an item in a
   list it does not probe is missed, a query left short is scored in full.
   *Indexed* (ScaNN's quantized partitions, :mod:`reco_common.scann_index`, or an HNSW graph,
   :mod:`reco_common.ann`, and the catalog reaches :attr:`IndexUse.min_items`):
   the index proposes ``n + MARGIN`` plus as many as the query
   excludes (at most :attr:`IndexUse.max_fetch`), the excluded ones are dropped, and a query
   left with fewer than ``n + MARGIN`` is scored exactly instead. Approximate: an item the
   index misses is missed (recall in docs/benchmarks.md); an excluded item never comes back.
2. *Exclusions* (the user's own items) never become candidates. A query's optional *bonus*
   (non-negative extra scores of a few items, e.g. neighbours of what the user just did) is
   added before the cut on the exact path; on the sampled path its items join the candidates.
   Either way the result stays exact: an item outside both sets scores no more than the
   ``n``-th candidate.
3. *Re-scoring* of the candidates, each as its own dot product (plus bonus) in a canonical order: BLAS rounds
   differently depending on the batch's shape, and this step makes a user's list independent of
   which other users shared the batch (a redelivery reproduces it exactly). Ties go to the lower
   item row.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from reco_common.artifact import FloatMatrix
from reco_common.ivf import IvfIndex, Triples
from reco_common.scann_index import REORDERS, Search

if TYPE_CHECKING:  # only an artifact with an index imports usearch (reco_common.artifact)
    from reco_common.ann import ItemIndex
    from reco_common.scann_index import ScannIndex

Rows = npt.NDArray[np.intp]
Scores = npt.NDArray[np.float32]
Bonus = tuple[Rows, Scores]
"""Sorted, unique item rows and their non-negative extra scores, for one query."""
_NO_VALUES: Scores = np.empty(0, dtype=np.float32)

logger = logging.getLogger(__name__)

# Extra candidates kept from the first pass so that rounding cannot push a true top-N item out.
MARGIN = 16
# Catalogs up to this size are scored with one product and argpartition per chunk of queries.
EXACT_MAX_ITEMS = 32_768
SAMPLE_SIZE = 16_384
# float32 cells in one block of scores (8 MiB): near cache-sized, yet few enough numpy calls per
# batch that the scan seldom hands the GIL back and forth with the event loop.
BLOCK_CELLS = 1 << 21
MIN_BLOCK_ITEMS = 4096
# float32 cells in one full score matrix on the exact path (8 MiB, ~200 queries at 10k items):
# the cut reads the matrix twice more, mostly from cache at this size. At 10k items a batch of
# 500 users was selected in 12.8-13.1 ms of CPU in chunks of 100-200 queries against 15.7 ms
# with 32 MiB; at 30k items score() took 80-87 ms per 500 users against 91-111 (1 MiB: 85-101,
# the product's calls too small).
EXACT_CELLS = 1 << 21
# Columns per group in ``top_columns``; rows with fewer than ``GROUPS_PER_K`` x k groups are cut
# by a plain ``argpartition``. At 10k items and k = 116: 2.5x less CPU than ``argpartition``
# over the whole row (8 columns a group; 4 and 12 were slower).
GROUP_COLUMNS = 8
GROUPS_PER_K = 4
# The index is asked for a query's own count, rounded up to this step: queries that exclude
# about as many items share a search call, and a query's candidates stay its own.
FETCH_STEP = 32
# Defaults of IndexUse (measured: docs/benchmarks.md, "Approximate top-N").
ANN_MIN_ITEMS = 1_000_000
ANN_EXPANSION = 1024
ANN_MAX_FETCH = 1024
# Lists an IVF query probes when the index has no recall curve (artifacts before session 9):
# 160 of 1,000 gave recall@100 0.98-0.99 at 1M items.
ANN_PROBES = 160
# The recall@100 an IVF index with a curve is probed for: the fewest lists at which each of
# the trainer's query families reached it (docs/worker.md).
ANN_RECALL = 0.98
# An index whose curve needs more than this share of its lists for the recall is not searched:
# the exact scan is cheaper there (a probed list's row costs ~1.7x an exact-scanned one, from
# 0.32-0.45 ms per user over 16 % of 1M items against 1.5 for all of them, session 8). Random
# isotropic factors need ~60 % of the lists for 0.98; a trained model's spectrum ~17 %.
IVF_MAX_SHARE = 1 / 3


@dataclass(frozen=True, slots=True)
class IndexUse:
    """When the artifact's approximate index replaces the exact scan, and how it is searched
    (``RECO_WORKER_ANN_*``, docs/worker.md): catalogs of ``min_items`` and more; an IVF index
    probes ``probes`` lists per query, or (unset) as many as its recall curve says reach
    ``recall``; an HNSW graph is searched with ``expansion`` (ef: recall
    against time), at most ``max_fetch`` candidates asked for a query however many items it
    excludes."""

    min_items: int = ANN_MIN_ITEMS
    expansion: int = ANN_EXPANSION
    max_fetch: int = ANN_MAX_FETCH
    probes: int | None = None
    recall: float = ANN_RECALL

    def probes_of(self, ivf: IvfIndex) -> int | None:
        """The lists a query probes: ``probes`` when set, else the fewest that reached
        ``recall`` on the index's curve (None: more than :data:`IVF_MAX_SHARE` of them, search
        exactly instead), else :data:`ANN_PROBES`."""
        if self.probes is not None:
            return self.probes
        tuned = ivf.probes_for(self.recall)
        if tuned is None:
            return ANN_PROBES
        return tuned if tuned <= ivf.lists * IVF_MAX_SHARE else None

    def search_of(self, scann: ScannIndex) -> Search | None:
        """How a ScaNN query is searched: ``probes`` leaves when set (the shallowest re-score),
        else the shallowest re-score and fewest leaves that reached ``recall`` in the index's
        table (None: nothing did, search exactly instead)."""
        if self.probes is not None:
            return Search(self.probes, REORDERS[0])
        return scann.search_for(self.recall)


@dataclass(frozen=True, slots=True)
class Selection:
    """Per query (row), item rows best first and their scores; ``-inf`` pads short rows."""

    items: Rows
    scores: Scores

    def lengths(self) -> npt.NDArray[np.intp]:
        """How many leading entries of each row are real (the rest is padding)."""
        counts: npt.NDArray[np.intp] = np.isfinite(self.scores).sum(axis=1)
        return counts


@dataclass(frozen=True, slots=True)
class Pairs:
    """Sparse ``(query, item row)`` pairs of a batch, sorted by query then row and unique, each
    with a value when they are bonuses: a batch's exclusions or bonuses as three flat arrays
    (built without a Python loop per query by the scoring, or from per-query lists)."""

    queries: Rows
    rows: Rows
    values: Scores = field(default_factory=lambda: _NO_VALUES)

    @staticmethod
    def of(rows: Sequence[Rows], values: Sequence[Scores] | None = None) -> Pairs:
        """From one sorted, unique array of rows per query (and their values)."""
        lengths = [len(r) for r in rows]
        if not sum(lengths):
            return Pairs(np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp))
        queries = np.repeat(np.arange(len(rows), dtype=np.intp), lengths)
        flat = np.concatenate(rows).astype(np.intp)
        joined = _NO_VALUES if values is None else np.concatenate(values).astype(np.float32)
        return Pairs(queries, flat, joined)

    def window(self, start: int, stop: int) -> Pairs:
        """The pairs of queries ``[start, stop)``, renumbered from 0."""
        lo, hi = np.searchsorted(self.queries, (start, stop))
        values = self.values[lo:hi] if len(self.values) else _NO_VALUES
        return Pairs(self.queries[lo:hi] - start, self.rows[lo:hi], values)

    def keys(self, width: int) -> npt.NDArray[np.int64]:
        """``query * width + row`` of every pair (sorted, as the pairs are)."""
        keys: npt.NDArray[np.int64] = self.queries.astype(np.int64) * width + self.rows
        return keys

    def holds(self, queries: Rows, rows: Rows, width: int) -> npt.NDArray[np.bool_]:
        """Whether each ``(queries[i], rows[i])`` is one of these pairs (``width``: more than
        the largest row): a binary search of the sorted keys each, where ``np.isin`` would sort
        the looked-up pairs too (~450 per query on the IVF path at 1M items)."""
        keys = self.keys(width)
        wanted = queries.astype(np.int64) * width + rows
        if not len(keys):
            return np.zeros(len(wanted), dtype=np.bool_)
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        held: npt.NDArray[np.bool_] = keys[at] == wanted
        return held

    def counts(self, n_queries: int) -> npt.NDArray[np.intp]:
        counts: npt.NDArray[np.intp] = np.bincount(self.queries, minlength=n_queries)
        return counts

    def of_query(self, query: int) -> Rows:
        lo, hi = np.searchsorted(self.queries, (query, query + 1))
        return self.rows[lo:hi]

    def padded(self, n_queries: int, sentinel: int) -> Rows:
        """The rows as a ``[n_queries, widest]`` matrix, ``sentinel`` where a query has fewer."""
        counts = self.counts(n_queries)
        out = np.full((n_queries, int(counts.max(initial=0))), sentinel, dtype=np.intp)
        starts = np.cumsum(counts) - counts
        out[self.queries, np.arange(len(self.queries)) - starts[self.queries]] = self.rows
        return out


class TopSelector:
    """The top ``n`` items of many queries ``[q, 1]`` against ``items`` ``[v, b]``."""

    def __init__(
        self,
        items: FloatMatrix,
        *,
        index: ItemIndex | None = None,
        ivf: IvfIndex | None = None,
        scann: ScannIndex | None = None,
        index_use: IndexUse | None = None,
        exact_max: int = EXACT_MAX_ITEMS,
        sample_size: int = SAMPLE_SIZE,
        block_cells: int = BLOCK_CELLS,
    ) -> None:
        self._items = items
        self._n = len(items)
        self._use = index_use or IndexUse()
        indexed = self._n >= self._use.min_items
        # The artifact's one index (the trainer builds one kind): the IVF lists, else ScaNN's
        # partitions, else the HNSW graph.
        self._ivf = ivf if indexed else None
        # The lists each query probes in the IVF index, or the leaves it searches in the ScaNN
        # index (0: none searched).
        self.probes = 0
        if self._ivf is not None:
            probes = self._use.probes_of(self._ivf)
            if probes is None:
                logger.warning(
                    "the IVF index needs more than %.0f %% of its %d lists for recall@100 %.3f "
                    "(by its curve): searching this catalog exactly",
                    IVF_MAX_SHARE * 100,
                    self._ivf.lists,
                    self._use.recall,
                )
                self._ivf = None
            else:
                self.probes = probes
        self._scann = scann if indexed and self._ivf is None else None
        self._scann_search = Search(0, REORDERS[0])
        if self._scann is not None:
            search = self._use.search_of(self._scann)
            if search is None:
                logger.warning(
                    "the ScaNN index reached recall@100 %.3f at none of its measured leaf "
                    "counts: searching this catalog exactly",
                    self._use.recall,
                )
                self._scann = None
            else:
                self.probes, self._scann_search = search.leaves, search
        searched = self._ivf is None and self._scann is None
        self._index = index if indexed and searched else None
        # Queries answered through the index, those of them left short of candidates by their
        # threshold (their probed lists, or the catalog, scanned again), and those scored exactly.
        self.indexed_queries = 0
        self.threshold_rescans = 0
        self.exact_fallbacks = 0
        self._exact = self._n <= exact_max
        self._block_cells = block_cells
        self._sample_size = max(1, min(sample_size, self._n // 8))

    @functools.cached_property
    def _sample(self) -> FloatMatrix:
        """Random item rows, taken at the first query that needs them, not at the model's load:
        the rows are spread over the whole mapped matrix, and faulting them in is the one read
        of every item page a load would otherwise do (a first batch scans them anyway)."""
        rows = np.random.default_rng(0).choice(self._n, size=self._sample_size, replace=False)
        return np.ascontiguousarray(self._items[np.sort(rows)])

    def select(
        self,
        queries: FloatMatrix,
        exclude: Pairs | Sequence[Rows],
        n: int,
        bonus: Pairs | Sequence[Bonus] | None = None,
    ) -> Selection:
        """Per query, the best ``n`` item rows with ``exclude``d rows left out; a query's
        ``bonus`` rows (never excluded ones) score their dot product plus the bonus."""
        if not isinstance(exclude, Pairs):
            exclude = Pairs.of(exclude)
        if bonus is None:
            bonus = Pairs.of([])
        elif not isinstance(bonus, Pairs):
            bonus = Pairs.of([b[0] for b in bonus], [b[1] for b in bonus])
        k = min(n + MARGIN, self._n)
        indexed = self._index is not None or self._scann is not None
        exact_chunk = self._exact and not indexed and self._ivf is None
        chunk = max(1, EXACT_CELLS // self._n) if exact_chunk else max(1, len(queries))
        parts = []
        for start in range(0, len(queries), chunk):
            q = queries[start : start + chunk]
            excl = exclude.window(start, start + chunk)
            extra = _Extra(bonus.window(start, start + chunk), self._n)
            if indexed:
                candidates = extra.joined(self._indexed_candidates(q, excl, k), len(q))
            elif exact_chunk:
                candidates = self._exact_candidates(q, excl, k, extra)
            else:
                candidates = extra.joined(self._sampled_candidates(q, excl, k), len(q))
            parts.append(self._rescore(candidates, q, min(n, self._n), extra))
        if not parts:
            empty = np.empty((0, min(n, self._n)))
            return Selection(empty.astype(np.intp), empty.astype(np.float32))
        return Selection(
            np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts])
        )

    # ------------------------------------------------------------------ candidates

    def _exact_candidates(self, q: FloatMatrix, exclude: Pairs, k: int, extra: _Extra) -> Rows:
        scores = q @ self._items.T
        extra.add_to(scores)
        scores.ravel()[exclude.keys(self._n)] = -np.inf
        top = top_columns(scores, k)
        return _pad_excluded(top, np.take_along_axis(scores, top, axis=1), self._n)

    def _sampled_candidates(self, q: FloatMatrix, exclude: Pairs, k: int) -> Rows:
        thresholds = self._thresholds(q, k + int(exclude.counts(len(q)).max(initial=0)))
        rows, cols, vals = self._scan(q, thresholds[:, None])
        keep = ~exclude.holds(rows, cols, self._n)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        short = np.flatnonzero(
            np.bincount(rows, minlength=len(q)) < self._reachable(exclude, len(q), k)
        )
        if self._ivf is not None:
            self.indexed_queries += len(q)
        if len(short):
            rows, cols, vals = self._rescan(q, exclude, short, k, (rows, cols, vals))
        return self._best_per_row(rows, cols, vals, len(q), k)

    def _indexed_candidates(self, q: FloatMatrix, exclude: Pairs, k: int) -> Rows:
        """The index's candidates less the excluded rows; a query left short of ``k`` (or of
        every row it may have) is scored exactly instead."""
        counts = exclude.counts(len(q))
        wanted = -(-(k + counts) // FETCH_STEP) * FETCH_STEP
        fetch = np.minimum(wanted, max(self._use.max_fetch, k))
        found: Rows = np.full((len(q), int(fetch.max(initial=k))), self._n, dtype=np.intp)
        for count in np.unique(fetch).tolist():
            members = np.flatnonzero(fetch == count)
            rows = self._search(q[members], count)
            found[members, :count] = np.where(rows >= 0, rows, self._n)
        real = found < self._n
        queries = np.broadcast_to(np.arange(len(q), dtype=np.intp)[:, None], found.shape)
        held = exclude.holds(queries.ravel(), np.where(real, found, 0).ravel(), self._n)
        found[real & held.reshape(found.shape)] = self._n
        short = np.flatnonzero((found < self._n).sum(axis=1) < self._reachable(exclude, len(q), k))
        self.indexed_queries += len(q)
        self.exact_fallbacks += len(short)
        if len(short):
            logger.debug("%d of %d queries short of indexed candidates: exact", len(short), len(q))
            found = np.pad(
                found, ((0, 0), (0, max(0, k - found.shape[1]))), constant_values=self._n
            )
            found[short] = self._n
            for row in short.tolist():
                top, _ = self._full_scan(q[row], exclude.of_query(row), k)
                found[row, : len(top)] = top
        return found

    def _search(self, q: FloatMatrix, count: int) -> Rows:
        """The index's ``count`` candidates per query (``-1`` pads)."""
        if self._scann is not None:
            search = self._scann_search
            return self._scann.search(q, count, leaves=search.leaves, reorder=search.reorder)
        assert self._index is not None
        return self._index.search(q, count, expansion=self._use.expansion)

    def _thresholds(self, q: FloatMatrix, wanted: int) -> Scores:
        """Per query, a threshold that about ``wanted`` + 4 sigma items or more beat: the
        sample's j-th best score, or the j-th best of its groups' maxima (no higher)."""
        sample = q @ self._sample.T
        size = sample.shape[1]
        mean = wanted * size / self._n
        j = min(size, math.ceil(mean + 4 * math.sqrt(mean) + 2))
        groups = size // GROUP_COLUMNS
        if groups >= GROUPS_PER_K * j:
            # The j-th largest of the interleaved groups' maxima is at most the j-th largest
            # score (j distinct groups, j distinct scores), so no fewer items beat it; the
            # partition runs over 1/8 of the row (at 1M items 16,384 samples, j ~ 10).
            grouped = groups * GROUP_COLUMNS
            sample = sample[:, :grouped].reshape(len(q), GROUP_COLUMNS, groups).max(axis=1)
            size = groups
        thresholds: Scores = np.partition(sample, size - j, axis=1)[:, size - j]
        return thresholds

    def _scan(self, q: FloatMatrix, thresholds: Scores) -> Triples:
        """``(query row, item row, score)`` of every score at or above its query's threshold:
        over the whole catalog, or over the lists each query probes in the IVF index."""
        if self._ivf is not None:
            return self._ivf.scan(q, thresholds[:, 0], self.probes)
        block = max(min(MIN_BLOCK_ITEMS, self._block_cells), self._block_cells // len(q))
        rows, cols, vals = [], [], []
        for start in range(0, self._n, block):
            scores = q @ self._items[start : start + block].T
            hits = np.flatnonzero(scores >= thresholds)
            width = scores.shape[1]
            rows.append(hits // width)
            cols.append(hits % width + start)
            vals.append(scores.ravel()[hits])
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)

    def _reachable(self, exclude: Pairs, n_queries: int, k: int) -> npt.NDArray[np.intp]:
        reachable: npt.NDArray[np.intp] = np.minimum(k, self._n - exclude.counts(n_queries))
        return reachable

    def _rescan(
        self,
        q: FloatMatrix,
        exclude: Pairs,
        short: Rows,
        k: int,
        found: tuple[Rows, Rows, Scores],
    ) -> tuple[Rows, Rows, Scores]:
        """Queries whose threshold left too few candidates: their ``k`` best over the catalog."""
        rows, cols, vals = found
        self.threshold_rescans += len(short)
        keep = ~np.isin(rows, short)
        all_rows, all_cols, all_vals = [rows[keep]], [cols[keep]], [vals[keep]]
        if self._ivf is not None:
            found = self._unthresholded(q, exclude, short, k)
            all_rows.append(found[0])
            all_cols.append(found[1])
            all_vals.append(found[2])
            short = np.setdiff1d(short, found[0])
            self.exact_fallbacks += len(short)
        logger.debug("%d of %d queries short of candidates: full scan", len(short), len(q))
        for row in short:
            top, scores = self._full_scan(q[row], exclude.of_query(row), k)
            all_rows.append(np.full(len(top), row))
            all_cols.append(top)
            all_vals.append(scores)
        return np.concatenate(all_rows), np.concatenate(all_cols), np.concatenate(all_vals)

    def _unthresholded(self, q: FloatMatrix, exclude: Pairs, short: Rows, k: int) -> Triples:
        """The ``short`` queries' probed lists in full (the threshold depends on the batch's
        exclusions, the probed lists' best ``k`` do not): the pairs of those whose lists hold
        enough rows; the others need the whole catalog."""
        assert self._ivf is not None
        unbounded = np.full(len(short), -np.inf, dtype=np.float32)
        rows, cols, vals = self._ivf.scan(q[short], unbounded, self.probes)
        rows = short[rows]
        keep = ~exclude.holds(rows, cols, self._n)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        enough = np.bincount(rows, minlength=len(q)) >= self._reachable(exclude, len(q), k)
        took = enough[rows]
        # Each query's best k only: ~160k rows a query at 1M items, which would otherwise widen
        # the batch's padded candidate matrix (_best_per_row) to [queries, 160k].
        return _best_of_each(rows[took], cols[took], vals[took], k)

    def _full_scan(self, query: FloatMatrix, excluded: Rows, k: int) -> tuple[Rows, Scores]:
        """One query's ``k`` best rows over the whole catalog (fewer if the rest is excluded)."""
        scores = self._items @ query
        scores[excluded] = -np.inf
        top: Rows = np.argpartition(scores, self._n - k)[self._n - k :]
        top = top[np.isfinite(scores[top])]
        return top, scores[top]

    def _best_per_row(self, rows: Rows, cols: Rows, vals: Scores, n_rows: int, k: int) -> Rows:
        return best_per_row(rows, cols, vals, n_rows, k, sentinel=self._n)

    # ------------------------------------------------------------------ re-scoring

    def _rescore(self, candidates: Rows, q: FloatMatrix, n: int, extra: _Extra) -> Selection:
        """Each candidate's own dot product (plus bonus), ordered by (score desc, item row
        asc); a candidate listed twice counts once."""
        cols = np.sort(candidates, axis=1)
        padding = cols == self._n
        padding[:, 1:] |= cols[:, 1:] == cols[:, :-1]
        cols[padding] = self._n
        gathered = self._items[np.minimum(cols, self._n - 1)]
        scores = np.einsum("bkd,bd->bk", gathered, q)
        scores += extra.lookup(cols)
        scores[padding] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        return Selection(
            np.take_along_axis(cols, order, axis=1), np.take_along_axis(scores, order, axis=1)
        )


class _Extra:
    """A chunk's bonuses, with their keys ``query row * (n_items + 1) + item row`` (room for
    the padding row) for looking them up."""

    def __init__(self, bonus: Pairs, n_items: int) -> None:
        self._bonus = bonus
        self._width = n_items + 1
        self._keys = bonus.keys(self._width)

    def add_to(self, scores: Scores) -> None:
        """Add the bonuses to a full ``[queries, n_items]`` score matrix."""
        if len(self._keys):
            scores.ravel()[self._bonus.keys(scores.shape[1])] += self._bonus.values

    def joined(self, candidates: Rows, n_queries: int) -> Rows:
        """``candidates`` with each query's bonus rows appended (padding row past the end)."""
        if not len(self._keys):
            return candidates
        extra = self._bonus.padded(n_queries, self._width - 1).astype(candidates.dtype)
        return np.concatenate([candidates, extra], axis=1)

    def lookup(self, cols: Rows) -> Scores:
        """The bonus of each (query row, candidate column), 0 where there is none."""
        out = np.zeros(cols.shape, dtype=np.float32)
        if self._keys.size == 0:
            return out
        keys = np.arange(len(cols), dtype=np.int64)[:, None] * self._width + cols
        at = np.minimum(np.searchsorted(self._keys, keys), self._keys.size - 1)
        found = self._keys[at] == keys
        out[found] = self._bonus.values[at[found]]
        return out


def top_columns(scores: Scores, k: int) -> Rows:
    """Per row of ``scores``, the columns of its ``k`` largest values, in no order (among equal
    values, any: as ``argpartition`` chooses).

    Column ``j`` belongs to group ``j % groups`` (interleaved: each group's maximum is a
    reduction over whole contiguous slices of the row). The ``k`` groups with the largest maxima
    hold ``k`` largest values: with ``v`` the ``k``-th largest value of the row, fewer than ``k``
    values exceed ``v``, so fewer than ``k`` groups have a maximum above ``v``, and all of those
    are chosen; if more than ``k`` groups reach ``v``, each chosen one holds a value of at least
    ``v``, else every group holding one is chosen. The columns past the last whole group are
    candidates always. ``argpartition`` then runs over the groups' maxima and over the chosen
    groups' columns, ~1/4 of the row, instead of over the whole row."""
    n_rows, width = scores.shape
    groups = width // GROUP_COLUMNS
    if groups < GROUPS_PER_K * k:
        top: Rows = np.argpartition(scores, width - k, axis=1)[:, width - k :]
        return top
    grouped = groups * GROUP_COLUMNS
    maxima = scores[:, :grouped].reshape(n_rows, GROUP_COLUMNS, groups).max(axis=1)
    best = np.argpartition(maxima, groups - k, axis=1)[:, groups - k :]
    members = np.arange(0, grouped, groups)
    columns = (best[:, None, :] + members[None, :, None]).reshape(n_rows, -1)
    if grouped < width:
        rest = np.broadcast_to(np.arange(grouped, width), (n_rows, width - grouped))
        columns = np.concatenate([columns, rest], axis=1)
    flat = columns + (np.arange(n_rows) * width)[:, None]
    values = scores.ravel()[flat]
    keep = np.argpartition(values, values.shape[1] - k, axis=1)[:, values.shape[1] - k :]
    chosen: Rows = np.take_along_axis(columns, keep, axis=1)
    return chosen


def best_per_row(
    rows: Rows, cols: Rows, vals: Scores, n_rows: int, k: int, *, sentinel: int
) -> Rows:
    """Of the triples ``(row, col, value)``, the ``k`` best columns of each row as a
    ``[n_rows, k]`` matrix, ``sentinel`` where a row has fewer."""
    # numpy sorts 16-bit integers by radix (linear) when asked for a stable sort: ~230k
    # candidates of a batch of 500 at 1M items.
    keys = rows.astype(np.uint16) if n_rows <= 1 << 16 else rows
    order = np.argsort(keys, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n_rows)
    width = max(k, int(counts.max(initial=0)))
    position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    padded_vals = np.full((n_rows, width), -np.inf, dtype=np.float32)
    padded_cols = np.full((n_rows, width), sentinel, dtype=np.intp)
    padded_vals[rows, position] = vals
    padded_cols[rows, position] = cols
    top = np.argpartition(padded_vals, width - k, axis=1)[:, width - k :]
    return _pad_excluded(
        np.take_along_axis(padded_cols, top, axis=1),
        np.take_along_axis(padded_vals, top, axis=1),
        sentinel,
    )


def _best_of_each(rows: Rows, cols: Rows, vals: Scores, k: int) -> Triples:
    """Of the triples ``(row, col, value)`` of each row, the ``k`` of highest value (among
    equal values, any); meant for a few rows with many triples each."""
    order = np.argsort(rows, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.flatnonzero(np.diff(rows, prepend=-1))
    stops = np.append(starts[1:], len(rows))
    kept = [
        lo + np.argpartition(vals[lo:hi], hi - lo - k)[hi - lo - k :]
        if hi - lo > k
        else np.arange(lo, hi)
        for lo, hi in zip(starts.tolist(), stops.tolist(), strict=True)
    ]
    at = np.concatenate(kept) if kept else np.empty(0, dtype=np.intp)
    return rows[at], cols[at], vals[at]


def _pad_excluded(cols: Rows, scores: Scores, sentinel: int) -> Rows:
    """``cols`` with every column whose score is ``-inf`` (excluded) replaced by ``sentinel``."""
    padded: Rows = np.where(np.isfinite(scores), cols, sentinel)
    return padded
