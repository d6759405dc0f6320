"""Exact top-N by inner product for a batch of queries, fast enough for a million items.

Three stages, each vectorised over the whole batch (no Python loop per item or per query):

1. *Candidates*, ``n + MARGIN`` per query, in float32. Small catalogs: one matrix product and
   ``argpartition``. Large catalogs: a per-query threshold is taken from a fixed random sample
   of items so that, with overwhelming probability, a few hundred items score above it; the
   catalog is scored in cache-sized blocks and only items above the threshold are kept. A query
   left with too few candidates is scored in full, so the result is exact either way.
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

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from reco_common.artifact import FloatMatrix

Rows = npt.NDArray[np.intp]
Scores = npt.NDArray[np.float32]
Bonus = tuple[Rows, Scores]
"""Sorted, unique item rows and their non-negative extra scores, for one query."""

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
# float32 cells in one full score matrix on the exact path (32 MiB).
EXACT_CELLS = 1 << 23


@dataclass(frozen=True, slots=True)
class Selection:
    """Per query (row), item rows best first and their scores; ``-inf`` pads short rows."""

    items: Rows
    scores: Scores

    def lengths(self) -> npt.NDArray[np.intp]:
        """How many leading entries of each row are real (the rest is padding)."""
        counts: npt.NDArray[np.intp] = np.isfinite(self.scores).sum(axis=1)
        return counts


class TopSelector:
    """The top ``n`` items of many queries ``[q, 1]`` against ``items`` ``[v, b]``."""

    def __init__(
        self,
        items: FloatMatrix,
        *,
        exact_max: int = EXACT_MAX_ITEMS,
        sample_size: int = SAMPLE_SIZE,
        block_cells: int = BLOCK_CELLS,
    ) -> None:
        self._items = items
        self._n = len(items)
        self._exact = self._n <= exact_max
        self._block_cells = block_cells
        size = max(1, min(sample_size, self._n // 8))
        rng = np.random.default_rng(0)
        self._sample = np.ascontiguousarray(
            items[np.sort(rng.choice(self._n, size=size, replace=False))]
        )

    def select(
        self,
        queries: FloatMatrix,
        exclude: Sequence[Rows],
        n: int,
        bonus: Sequence[Bonus] | None = None,
    ) -> Selection:
        """Per query, the best ``n`` item rows with ``exclude``d rows left out; a query's
        ``bonus`` rows (never excluded ones) score their dot product plus the bonus."""
        k = min(n + MARGIN, self._n)
        chunk = max(1, EXACT_CELLS // self._n) if self._exact else len(queries)
        parts = []
        for start in range(0, len(queries), chunk):
            q = queries[start : start + chunk]
            excl = exclude[start : start + chunk]
            extra = _Extra.of(bonus[start : start + chunk] if bonus else None, self._n)
            if self._exact:
                candidates = self._exact_candidates(q, excl, k, extra)
            else:
                candidates = extra.joined(self._sampled_candidates(q, excl, k), self._n)
            parts.append(self._rescore(candidates, q, min(n, self._n), extra))
        return Selection(
            np.concatenate([p.items for p in parts]), np.concatenate([p.scores for p in parts])
        )

    # ------------------------------------------------------------------ candidates

    def _exact_candidates(
        self, q: FloatMatrix, exclude: Sequence[Rows], k: int, extra: _Extra
    ) -> Rows:
        scores = q @ self._items.T
        extra.add_to(scores)
        scores.ravel()[_flat(exclude, self._n)] = -np.inf
        top: Rows = np.argpartition(scores, self._n - k, axis=1)[:, self._n - k :]
        return _pad_excluded(top, np.take_along_axis(scores, top, axis=1), self._n)

    def _sampled_candidates(self, q: FloatMatrix, exclude: Sequence[Rows], k: int) -> Rows:
        thresholds = self._thresholds(q, k + max((len(e) for e in exclude), default=0))
        rows, cols, vals = self._scan(q, thresholds[:, None])
        keep = ~np.isin(rows.astype(np.int64) * self._n + cols, _flat(exclude, self._n))
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        short = np.flatnonzero(np.bincount(rows, minlength=len(q)) < self._reachable(exclude, k))
        if len(short):
            rows, cols, vals = self._rescan(q, exclude, short, k, (rows, cols, vals))
        return self._best_per_row(rows, cols, vals, len(q), k)

    def _thresholds(self, q: FloatMatrix, wanted: int) -> Scores:
        """Per query, the sample's j-th best score: about ``wanted`` + 4 sigma items beat it."""
        sample = q @ self._sample.T
        size = sample.shape[1]
        mean = wanted * size / self._n
        j = min(size, math.ceil(mean + 4 * math.sqrt(mean) + 2))
        thresholds: Scores = np.partition(sample, size - j, axis=1)[:, size - j]
        return thresholds

    def _scan(self, q: FloatMatrix, thresholds: Scores) -> tuple[Rows, Rows, Scores]:
        """``(query row, item row, score)`` of every score at or above its query's threshold."""
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

    def _reachable(self, exclude: Sequence[Rows], k: int) -> npt.NDArray[np.intp]:
        lengths = np.fromiter((len(e) for e in exclude), dtype=np.intp, count=len(exclude))
        reachable: npt.NDArray[np.intp] = np.minimum(k, self._n - lengths)
        return reachable

    def _rescan(
        self,
        q: FloatMatrix,
        exclude: Sequence[Rows],
        short: Rows,
        k: int,
        found: tuple[Rows, Rows, Scores],
    ) -> tuple[Rows, Rows, Scores]:
        """Queries whose threshold left too few candidates: their ``k`` best over the catalog."""
        rows, cols, vals = found
        logger.debug("%d of %d queries short of candidates: full scan", len(short), len(q))
        keep = ~np.isin(rows, short)
        all_rows, all_cols, all_vals = [rows[keep]], [cols[keep]], [vals[keep]]
        for row in short:
            scores = self._items @ q[row]
            scores[exclude[row]] = -np.inf
            top = np.argpartition(scores, self._n - k)[self._n - k :]
            top = top[np.isfinite(scores[top])]
            all_rows.append(np.full(len(top), row))
            all_cols.append(top)
            all_vals.append(scores[top])
        return np.concatenate(all_rows), np.concatenate(all_cols), np.concatenate(all_vals)

    def _best_per_row(self, rows: Rows, cols: Rows, vals: Scores, n_rows: int, k: int) -> Rows:
        """The ``k`` best columns of each row as a padded ``[n_rows, k]`` matrix."""
        order = np.argsort(rows, kind="stable")
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = np.bincount(rows, minlength=n_rows)
        width = max(k, int(counts.max(initial=0)))
        position = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        padded_vals = np.full((n_rows, width), -np.inf, dtype=np.float32)
        padded_cols = np.full((n_rows, width), self._n, dtype=np.intp)
        padded_vals[rows, position] = vals
        padded_cols[rows, position] = cols
        top = np.argpartition(padded_vals, width - k, axis=1)[:, width - k :]
        return _pad_excluded(
            np.take_along_axis(padded_cols, top, axis=1),
            np.take_along_axis(padded_vals, top, axis=1),
            self._n,
        )

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
        scores += extra.lookup(cols, self._n)
        scores[padding] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
        return Selection(
            np.take_along_axis(cols, order, axis=1), np.take_along_axis(scores, order, axis=1)
        )


@dataclass(frozen=True, slots=True)
class _Extra:
    """A chunk's bonuses as sorted flat keys ``query row * (n_items + 1) + item row`` (room
    for the padding row) and values."""

    keys: npt.NDArray[np.int64]
    values: Scores
    rows: list[Rows]

    @staticmethod
    def of(bonus: Sequence[Bonus] | None, width: int) -> _Extra:
        if not bonus:
            return _Extra(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), [])
        rows = [b[0] for b in bonus]
        values = np.concatenate([b[1] for b in bonus]).astype(np.float32)
        return _Extra(_flat(rows, width + 1), values, rows)

    def add_to(self, scores: Scores) -> None:
        """Add the bonuses to a full ``[queries, n_items]`` score matrix."""
        if self.rows:
            scores.ravel()[_flat(self.rows, scores.shape[1])] += self.values

    def joined(self, candidates: Rows, sentinel: int) -> Rows:
        """``candidates`` with each query's bonus rows appended (``sentinel`` padding)."""
        width = max((len(r) for r in self.rows), default=0)
        if width == 0:
            return candidates
        extra = np.full((len(candidates), width), sentinel, dtype=candidates.dtype)
        for i, rows in enumerate(self.rows):
            extra[i, : len(rows)] = rows
        return np.concatenate([candidates, extra], axis=1)

    def lookup(self, cols: Rows, width: int) -> Scores:
        """The bonus of each (query row, candidate column), 0 where there is none."""
        out = np.zeros(cols.shape, dtype=np.float32)
        if self.keys.size == 0:
            return out
        keys = np.arange(len(cols), dtype=np.int64)[:, None] * (width + 1) + cols
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.size - 1)
        found = self.keys[at] == keys
        out[found] = self.values[at[found]]
        return out


def _flat(exclude: Sequence[Rows], width: int) -> npt.NDArray[np.int64]:
    """``row * width + col`` of every excluded (query row, item col) pair."""
    lengths = [len(e) for e in exclude]
    if not sum(lengths):
        return np.empty(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(exclude), dtype=np.int64), lengths)
    return rows * width + np.concatenate(exclude).astype(np.int64)


def _pad_excluded(cols: Rows, scores: Scores, sentinel: int) -> Rows:
    """``cols`` with every column whose score is ``-inf`` (excluded) replaced by ``sentinel``."""
    padded: Rows = np.where(np.isfinite(scores), cols, sentinel)
    return padded
