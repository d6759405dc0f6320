"""Scoring: the real-time policy and top-N selection, shared by the live worker and the replay.

A user's query is ``[q, 1]`` against item rows ``[v, b]`` (LightFM's ranking, bias included):

- ``q = (1 - blend) * u + blend * h`` for a user the model knows, where ``u`` is the trained
  vector and ``h`` the time-decayed, action-weighted mean of the embeddings of the user's recent
  items, rescaled to the model's median user-vector norm;
- ``q = h`` for a user the model does not know (cold start);
- no query at all, hence the model's popular items, when neither exists.

When the model carries item-to-item neighbours, each item's score also gains
``neighbour_weight`` x the decayed sum of its similarity to the user's last
``neighbour_history`` items (the items people interacted with alongside those), so a list
follows what the user just did, not only where their taste lies on average.

Items the user interacted with (their training interactions, carried by the artifact, and their
bounded live history) are excluded unless the policy says otherwise (shops of repeat
purchases). A batch of users is scored
at once by :class:`reco_worker.topn.TopSelector` (exact, and independent of the batch).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from reco_common.artifact import FloatMatrix, ItemNeighbours, ModelArrays, UserItems
from reco_common.contracts import DEFAULT_ACTION_WEIGHTS, ActionType, HistoryEntry
from reco_worker.topn import Bonus, Rows, Selection, TopSelector

Vector = npt.NDArray[np.float64]
_NO_ROWS: Rows = np.empty(0, dtype=np.intp)
_NO_BONUS: Bonus = (_NO_ROWS, np.empty(0, dtype=np.float32))


@dataclass(frozen=True, slots=True)
class Policy:
    """The real-time policy's parameters (docs/worker.md explains how the defaults were chosen)."""

    blend: float = 0.75
    half_life_s: float = 120.0
    action_weights: Mapping[ActionType, float] = field(
        default_factory=lambda: dict(DEFAULT_ACTION_WEIGHTS)
    )
    top_n: int = 100
    exclude_seen: bool = True
    neighbour_weight: float = 5.0
    neighbour_history: int = 3

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
        # One extra entry for the selection's padding (row ``n_items``), cut off before use.
        self._padded_ids = np.append(self.item_ids, "")
        self.item_index = {item: row for row, item in enumerate(arrays.item_ids)}
        self.user_index = {user: row for row, user in enumerate(arrays.user_ids)}
        self.popular_items = list(arrays.popular_items)
        self.popular_scores = [float(s) for s in arrays.popular_scores]
        user_items = arrays.user_items or UserItems.empty(len(arrays.user_ids))
        self.user_items = UserItems(np.array(user_items.indptr), np.array(user_items.indices))
        self.neighbours: ItemNeighbours | None = None
        if arrays.neighbours is not None:
            self.neighbours = ItemNeighbours(
                np.array(arrays.neighbours.rows), np.array(arrays.neighbours.scores)
            )
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

    def seen_rows(self, user_id: str, history: Sequence[HistoryEntry]) -> Rows:
        """The sorted rows of everything the user has: training interactions and ``history``."""
        live = self.known_rows(history)
        row = self.user_index.get(user_id)
        if row is None:
            return live
        return np.union1d(self.user_items.of(row), live).astype(np.intp)

    def popular(self, *, exclude: set[str], n: int) -> Ranked:
        pairs = [
            (i, s)
            for i, s in zip(self.popular_items, self.popular_scores, strict=True)
            if i not in exclude
        ]
        return Ranked([i for i, _ in pairs[:n]], [s for _, s in pairs[:n]], Source.POPULAR)

    def ids_of(self, rows: Rows) -> npt.NDArray[np.object_]:
        """Item ids of catalog rows; the selection's padding row maps to an empty id."""
        ids: npt.NDArray[np.object_] = self._padded_ids[rows]
        return ids

    def select(
        self,
        queries: FloatMatrix,
        exclude: Sequence[Rows],
        n: int,
        bonus: Sequence[Bonus] | None = None,
    ) -> Selection:
        """The top ``n`` rows and scores of each query ``[q, 1]`` (plus its ``bonus``),
        ``exclude``d rows left out."""
        return self._selector.select(queries, exclude, n, bonus)


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


def neighbour_bonus(
    model: ServingModel, history: Sequence[HistoryEntry], policy: Policy, exclude: Rows
) -> Bonus:
    """The items near the user's last ``neighbour_history`` known items, each scored
    ``neighbour_weight`` x the decayed sum of its similarities (sorted rows, ``exclude`` out)."""
    neighbours = model.neighbours
    known = [(r, e) for e in history if (r := model.item_index.get(e.item_id)) is not None]
    known = known[-policy.neighbour_history :]
    if neighbours is None or not known or policy.neighbour_weight <= 0:
        return _NO_BONUS
    newest = max(e.ts for _, e in known)
    decay = np.array([0.5 ** ((newest - e.ts) / policy.half_life_s) for _, e in known])
    rows = neighbours.rows[[r for r, _ in known]]
    scores = neighbours.scores[[r for r, _ in known]] * decay[:, None]
    valid = (rows >= 0) & ~np.isin(rows, exclude)
    items, inverse = np.unique(rows[valid], return_inverse=True)
    summed = np.zeros(len(items), dtype=np.float32)
    np.add.at(summed, inverse, scores[valid] * policy.neighbour_weight)
    return items.astype(np.intp), summed


QueryBuilder = Callable[
    [ServingModel, str, Sequence[HistoryEntry], Policy], tuple[Vector | None, Source]
]
NAIVE_HISTORY = 10


def naive_query(
    model: ServingModel, user_id: str, history: Sequence[HistoryEntry], policy: Policy
) -> tuple[Vector | None, Source]:
    """The baseline a real-time policy must beat: the trained vector (none for a new user) plus
    the plain, unnormalised mean embedding of the last ``NAIVE_HISTORY`` known items."""
    trained = model.user_vector(user_id)
    rows = [r for e in history if (r := model.item_index.get(e.item_id)) is not None]
    recent = (
        model.items[rows[-NAIVE_HISTORY:], :-1].astype(np.float64).mean(axis=0) if rows else None
    )
    if recent is None:
        return (
            (None, Source.POPULAR) if trained is None else (np.append(trained, 1.0), Source.MODEL)
        )
    if trained is None:
        return np.append(recent, 1.0), Source.RECENT
    return np.append(trained + recent, 1.0), Source.BLEND


def recommend(
    model: ServingModel,
    users: Sequence[tuple[str, Sequence[HistoryEntry]]],
    policy: Policy,
    *,
    query: QueryBuilder = build_query,
) -> list[Ranked]:
    """Each ``(user_id, history)``'s top-N under ``policy`` (``query`` builds each user's query
    vector: the real-time policy unless a baseline is measured): one matrix product per batch."""
    results: dict[int, Ranked] = {}
    queries: list[Vector] = []
    excludes: list[Rows] = []
    bonuses: list[Bonus] = []
    pending: list[tuple[int, Source]] = []
    for i, (user_id, history) in enumerate(users):
        vector, source = query(model, user_id, history, policy)
        if vector is None:
            seen = {e.item_id for e in history} if policy.exclude_seen else set()
            results[i] = model.popular(exclude=seen, n=policy.top_n)
            continue
        queries.append(vector)
        excludes.append(model.seen_rows(user_id, history) if policy.exclude_seen else _NO_ROWS)
        bonuses.append(neighbour_bonus(model, history, policy, excludes[-1]))
        pending.append((i, source))
    if queries:
        selected = model.select(
            np.stack(queries).astype(np.float32), excludes, policy.top_n, bonuses
        )
        items = model.ids_of(selected.items).tolist()
        scores = selected.scores.tolist()
        for (i, source), row_items, row_scores, length in zip(
            pending, items, scores, selected.lengths().tolist(), strict=True
        ):
            results[i] = Ranked(row_items[:length], row_scores[:length], source)
    return [results[i] for i in range(len(users))]
