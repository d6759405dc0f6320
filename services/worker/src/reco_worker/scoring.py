"""Scoring: the real-time policy and top-N selection, shared by the live worker and the replay.

A user's query is ``[q, 1]`` against item rows ``[v, b]`` (LightFM's ranking, bias included):

- ``q = (1 - blend) * u + blend * h`` for a user the model knows, where ``u`` is the trained
  vector and ``h`` the time-decayed, action-weighted mean of the embeddings of the user's recent
  items, rescaled to the model's median user-vector norm;
- ``q = h`` for a user the model does not know (cold start);
- no query at all, hence the model's popular items, when neither exists.

Items the user interacted with (their bounded history) are excluded. A batch of users is scored
with one float32 matrix product and ``argpartition``; the few surviving candidates are re-scored
in float64 row by row, so a user's list does not depend on which other users shared the batch
(BLAS rounding does): redelivery reproduces the same list bit for bit.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from reco_common.artifact import FloatMatrix, ModelArrays
from reco_common.contracts import DEFAULT_ACTION_WEIGHTS, ActionType

Rows = npt.NDArray[np.intp]
Vector = npt.NDArray[np.float64]

# Extra candidates kept from the float32 pass so that rounding cannot push a true top-N item out.
MARGIN = 16
# Catalogs up to this size are scored exactly; larger ones through a sampled threshold.
EXACT_MAX_ITEMS = 65_536
SAMPLE_SIZE = 16_384
BLOCK_ITEMS = 16_384
# Upper bound of float32 cells in one score matrix (64 MiB).
MAX_CELLS = 1 << 24


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One remembered action: ``ts`` is the effective event time in epoch seconds."""

    event_id: str
    item_id: str
    action: ActionType
    weight: float | None
    ts: float


@dataclass(frozen=True, slots=True)
class Policy:
    """The real-time policy's parameters (docs/worker.md explains how the defaults were chosen)."""

    blend: float = 0.5
    half_life_s: float = 3600.0
    action_weights: Mapping[ActionType, float] = field(
        default_factory=lambda: dict(DEFAULT_ACTION_WEIGHTS)
    )
    top_n: int = 100

    def weight(self, entry: HistoryEntry) -> float:
        return entry.weight if entry.weight is not None else self.action_weights[entry.action]


class Source(enum.StrEnum):
    """Where a list came from."""

    MODEL = "model"  # the trained user vector alone
    BLEND = "blend"  # trained vector blended with recent items
    RECENT = "recent"  # cold start: recent items alone
    POPULAR = "popular"  # nothing to go on


@dataclass(frozen=True, slots=True)
class Ranked:
    items: list[str]
    scores: list[float]
    source: Source


class ServingModel:
    """A verified model held in memory, indexed for scoring."""

    def __init__(self, *, name: str, version: str, uri: str, arrays: ModelArrays) -> None:
        self.name = name
        self.version = version
        self.uri = uri
        # Copies: the artifact's arrays are memory-mapped; serving needs them resident.
        self.items: FloatMatrix = np.array(arrays.item_factors, dtype=np.float32, order="C")
        self.users: FloatMatrix = np.array(arrays.user_factors, dtype=np.float32, order="C")
        self.item_ids = np.asarray(arrays.item_ids, dtype=object)
        self.item_index = {item: row for row, item in enumerate(arrays.item_ids)}
        self.user_index = {user: row for row, user in enumerate(arrays.user_ids)}
        self.popular_items = list(arrays.popular_items)
        self.popular_scores = [float(s) for s in arrays.popular_scores]
        self.reference_norm = _median_norm(self.users[:, :-1])
        self._selector = TopSelector(self.items)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_vector(self, user_id: str) -> Vector | None:
        row = self.user_index.get(user_id)
        return None if row is None else self.users[row, :-1].astype(np.float64)

    def known_rows(self, history: Sequence[HistoryEntry]) -> Rows:
        """The sorted catalog rows of the items in ``history`` (unknown items have none)."""
        rows = {row for e in history if (row := self.item_index.get(e.item_id)) is not None}
        return np.asarray(sorted(rows), dtype=np.intp)

    def popular(self, *, exclude: set[str], n: int) -> Ranked:
        pairs = [
            (i, s)
            for i, s in zip(self.popular_items, self.popular_scores, strict=True)
            if i not in exclude
        ]
        return Ranked([i for i, _ in pairs[:n]], [s for _, s in pairs[:n]], Source.POPULAR)

    def select(
        self, queries: npt.NDArray[np.float64], exclude: Sequence[Rows], n: int
    ) -> list[tuple[Rows, Vector]]:
        """The top ``n`` rows and scores of each query ``[q, 1]``, ``exclude``d rows left out."""
        return self._selector.select(queries, exclude, n)


def _median_norm(vectors: FloatMatrix) -> float:
    if len(vectors) == 0:
        return 1.0
    norm = float(np.median(np.linalg.norm(vectors, axis=1)))
    return norm if norm > 0 and math.isfinite(norm) else 1.0


def recent_vector(
    model: ServingModel, history: Sequence[HistoryEntry], policy: Policy
) -> Vector | None:
    """The decayed, weighted mean embedding of the user's known recent items, or ``None``.

    Decay is relative to the user's newest action, so a list is a function of the history alone.
    """
    if not history:
        return None
    newest = max(e.ts for e in history)
    rows: list[int] = []
    weights: list[float] = []
    for entry in history:
        row = model.item_index.get(entry.item_id)
        if row is None:
            continue
        rows.append(row)
        weights.append(policy.weight(entry) * 0.5 ** ((newest - entry.ts) / policy.half_life_s))
    if not rows:
        return None
    mean = np.asarray(weights) @ model.items[rows, :-1].astype(np.float64)
    norm = float(np.linalg.norm(mean))
    if not (norm > 0 and math.isfinite(norm)):
        return None
    return mean * (model.reference_norm / norm)


def build_query(
    model: ServingModel, user_id: str, history: Sequence[HistoryEntry], policy: Policy
) -> tuple[Vector | None, Source]:
    """The user's query ``[q, 1]`` under the real-time policy, and which branch produced it."""
    trained = model.user_vector(user_id)
    recent = recent_vector(model, history, policy)
    if trained is None:
        if recent is None:
            return None, Source.POPULAR
        return np.append(recent, 1.0), Source.RECENT
    if recent is None or policy.blend == 0:
        return np.append(trained, 1.0), Source.MODEL
    blended = (1.0 - policy.blend) * trained + policy.blend * recent
    return np.append(blended, 1.0), Source.BLEND


def recommend(
    model: ServingModel,
    users: Sequence[tuple[str, Sequence[HistoryEntry]]],
    policy: Policy,
) -> list[Ranked]:
    """Each ``(user_id, history)``'s top-N under ``policy``: one matrix product for the batch."""
    results: dict[int, Ranked] = {}
    queries: list[Vector] = []
    excludes: list[Rows] = []
    pending: list[tuple[int, Source]] = []
    for i, (user_id, history) in enumerate(users):
        query, source = build_query(model, user_id, history, policy)
        if query is None:
            results[i] = model.popular(exclude={e.item_id for e in history}, n=policy.top_n)
            continue
        queries.append(query)
        excludes.append(model.known_rows(history))
        pending.append((i, source))
    if queries:
        selected = model.select(np.stack(queries), excludes, policy.top_n)
        for (i, source), (rows, scores) in zip(pending, selected, strict=True):
            results[i] = Ranked(model.item_ids[rows].tolist(), scores.tolist(), source)
    return [results[i] for i in range(len(users))]


class TopSelector:
    """Top-N by inner product over an item matrix: exact for small catalogs, sampled for large.

    Large catalogs: a per-query threshold is taken from a fixed random sample of items so that,
    with overwhelming probability, a few hundred items score above it; blocks of the catalog are
    scored and only items above the threshold are kept. A query left with too few candidates is
    scored in full, so the result is exact either way.
    """

    def __init__(
        self,
        items: FloatMatrix,
        *,
        exact_max: int = EXACT_MAX_ITEMS,
        sample_size: int = SAMPLE_SIZE,
        block: int = BLOCK_ITEMS,
    ) -> None:
        self._items = items
        self._exact = len(items) <= exact_max
        self._block = block
        size = min(sample_size, len(items))
        rng = np.random.default_rng(0)
        self._sample = np.ascontiguousarray(
            items[np.sort(rng.choice(len(items), size=size, replace=False))]
        )

    def select(
        self, queries: npt.NDArray[np.float64], exclude: Sequence[Rows], n: int
    ) -> list[tuple[Rows, Vector]]:
        q32 = queries.astype(np.float32)
        per_chunk = max(1, MAX_CELLS // (len(self._items) if self._exact else self._block))
        out: list[tuple[Rows, Vector]] = []
        for start in range(0, len(queries), per_chunk):
            stop = start + per_chunk
            chunk = q32[start:stop]
            excl = exclude[start:stop]
            if self._exact:
                candidates = self._exact_candidates(chunk, excl, n)
            else:
                candidates = self._sampled_candidates(chunk, excl, n)
            out.extend(
                self._rescore(c, q, n) for c, q in zip(candidates, queries[start:stop], strict=True)
            )
        return out

    def _exact_candidates(self, q32: FloatMatrix, exclude: Sequence[Rows], n: int) -> list[Rows]:
        scores = q32 @ self._items.T
        for row, rows in enumerate(exclude):
            scores[row, rows] = -np.inf
        return [_top_finite(s, n + MARGIN) for s in scores]

    def _sampled_candidates(self, q32: FloatMatrix, exclude: Sequence[Rows], n: int) -> list[Rows]:
        wanted = n + MARGIN + max((len(e) for e in exclude), default=0)
        thresholds = self._thresholds(q32, wanted)
        found: list[list[Rows]] = [[] for _ in range(len(q32))]
        for start in range(0, len(self._items), self._block):
            block = q32 @ self._items[start : start + self._block].T
            hit_rows, hit_cols = np.nonzero(block >= thresholds[:, None])
            splits = np.searchsorted(hit_rows, np.arange(1, len(q32)))
            for row, cols in enumerate(np.split(hit_cols, splits)):
                if len(cols):
                    found[row].append(cols + start)
        return [
            self._finish_sampled(q, parts, rows, n)
            for q, parts, rows in zip(q32, found, exclude, strict=True)
        ]

    def _thresholds(self, q32: FloatMatrix, wanted: int) -> npt.NDArray[np.float32]:
        """A score that, per query, about ``4 * wanted`` items beat (the sample's j-th best)."""
        sample = q32 @ self._sample.T
        size = sample.shape[1]
        rate = size / len(self._items)
        mean = wanted * rate
        j = min(size, math.ceil(mean + 4 * math.sqrt(mean) + 2))
        return np.partition(sample, size - j, axis=1)[:, size - j]

    def _finish_sampled(
        self, q32: npt.NDArray[np.float32], parts: list[Rows], exclude: Rows, n: int
    ) -> Rows:
        candidates = np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)
        candidates = candidates[~np.isin(candidates, exclude)]
        reachable = len(self._items) - len(exclude)
        if len(candidates) < min(n + MARGIN, reachable):
            scores = self._items @ q32
            scores[exclude] = -np.inf
            return _top_finite(scores, n + MARGIN)
        scores = self._items[candidates] @ q32
        keep = np.argpartition(scores, max(0, len(scores) - n - MARGIN))[-(n + MARGIN) :]
        return candidates[keep]

    def _rescore(self, candidates: Rows, query: Vector, n: int) -> tuple[Rows, Vector]:
        """float64, one row at a time, in a canonical order: independent of the batch."""
        rows = np.sort(candidates)
        scores = (self._items[rows].astype(np.float64) * query).sum(axis=1)
        order = np.lexsort((rows, -scores))[:n]
        return rows[order], scores[order]


def _top_finite(scores: npt.NDArray[np.float32], k: int) -> Rows:
    """Indices of the ``k`` best finite scores (fewer when fewer are finite), unordered."""
    top: Rows = (
        np.argpartition(scores, len(scores) - k)[len(scores) - k :]
        if k < len(scores)
        else np.arange(len(scores))
    )
    finite: Rows = top[np.isfinite(scores[top])]
    return finite
