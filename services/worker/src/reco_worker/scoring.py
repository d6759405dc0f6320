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
purchases).

A batch of users is scored at once, without a Python loop per user or per history entry: the
histories arrive columnar (:class:`Histories`), the queries, exclusions and neighbour bonuses
are built with segment operations over the whole batch, and the selection is one
:class:`reco_worker.topn.TopSelector` call (exact). Every per-user quantity is reduced over that
user's own entries in history order only, so a user's list does not depend on which other users
shared the batch: the live worker (batches of a few hundred), a rebuild (thousands) and the
replay give the same list for the same history.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Final

import numpy as np
import numpy.typing as npt

from reco_common.artifact import FloatMatrix, ModelArrays, UserItems
from reco_common.contracts import (
    DEFAULT_ACTION_WEIGHTS,
    DEFAULT_BLEND,
    ActionType,
    HistoryColumns,
    HistoryEntry,
)
from reco_common.id_lookup import for_serving
from reco_worker.topn import IndexUse, Pairs, Rows, Selection, TopSelector

Vector = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float64]
_ACTIONS: Final = list(ActionType)
_ACTION_CODE: Final = {action: code for code, action in enumerate(_ACTIONS)}


@dataclass(frozen=True, slots=True)
class Policy:
    """The real-time policy's parameters (docs/worker.md explains how the defaults were chosen)."""

    blend: float = DEFAULT_BLEND
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

    def __init__(
        self,
        *,
        name: str,
        version: str,
        uri: str,
        arrays: ModelArrays,
        index_use: IndexUse | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.uri = uri
        # Mapped, not copied (the artifact's arrays are float32 and C-ordered already, and so
        # are the training items and neighbours): no second copy in memory, and pods on one node
        # share the page cache of a shared cache volume. Pages are read on first use.
        self.items: FloatMatrix = np.ascontiguousarray(arrays.item_factors, dtype=np.float32)
        self.users: FloatMatrix = np.ascontiguousarray(arrays.user_factors, dtype=np.float32)
        self.item_ids = np.asarray(arrays.item_ids, dtype=object)
        # One extra entry for the selection's padding (row ``n_items``), cut off before use.
        self._padded_ids = np.append(self.item_ids, "")
        # id -> row: a dict for small sets, else the artifact's lookups, mapped (id_lookup).
        self.item_index = for_serving(arrays.item_lookup, arrays.item_ids)
        self.user_index = for_serving(arrays.user_lookup, arrays.user_ids)
        self.popular_items = list(arrays.popular_items)
        self.popular_scores = [float(s) for s in arrays.popular_scores]
        self.user_items = arrays.user_items or UserItems.empty(len(arrays.user_ids))
        self.neighbours = arrays.neighbours
        self.reference_norm = _median_norm(self.users[:, :-1])
        # The artifact's approximate index (mapped, like the factors) on large catalogs.
        self._selector = TopSelector(
            self.items,
            index=arrays.item_index,
            ivf=arrays.item_ivf,
            scann=arrays.item_scann,
            index_use=index_use,
        )

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_vector(self, user_id: str) -> Vector | None:
        row = self.user_index.get(user_id)
        return None if row is None else self.users[row, :-1].astype(np.float64)

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
        self, queries: FloatMatrix, exclude: Pairs, n: int, bonus: Pairs | None = None
    ) -> Selection:
        """The top ``n`` rows and scores of each query ``[q, 1]`` (plus its ``bonus``),
        ``exclude``d rows left out."""
        return self._selector.select(queries, exclude, n, bonus)

    @property
    def selector(self) -> TopSelector:
        """The top-N selection of this model (its counts of indexed and exact queries)."""
        return self._selector

    def user_rows(self, user_ids: Sequence[str]) -> Rows:
        """Each user's row of the trained vectors, ``-1`` for a user the model does not know."""
        return self.user_index.rows_of(user_ids)

    def item_rows(self, item_ids: Sequence[str]) -> Rows:
        """Each item's catalog row, ``-1`` for an item the model does not know."""
        return self.item_index.rows_of(item_ids)


def _median_norm(vectors: FloatMatrix) -> float:
    if len(vectors) == 0:
        return 1.0
    norm = float(np.median(np.linalg.norm(vectors, axis=1)))
    return norm if norm > 0 and math.isfinite(norm) else 1.0


@dataclass(frozen=True, slots=True)
class Histories:
    """Many users' histories, columnar: user ``i``'s entries are ``[indptr[i], indptr[i + 1])``,
    oldest first (as Redis returns a history: by time, then member)."""

    user_ids: Sequence[str]
    indptr: Rows
    item_ids: Sequence[str]
    actions: Sequence[ActionType]
    weights: Sequence[float | None]
    ts: Vector

    @staticmethod
    def of(users: Sequence[tuple[str, Sequence[HistoryEntry]]]) -> Histories:
        """From ``(user_id, entries)`` pairs."""
        entries = [e for _, history in users for e in history]
        lengths = [len(history) for _, history in users]
        return Histories(
            user_ids=[u for u, _ in users],
            indptr=np.concatenate([[0], np.cumsum(lengths, dtype=np.intp)]).astype(np.intp),
            item_ids=[e.item_id for e in entries],
            actions=[e.action for e in entries],
            weights=[e.weight for e in entries],
            ts=np.fromiter((e.ts for e in entries), dtype=np.float64, count=len(entries)),
        )

    @staticmethod
    def of_columns(users: Sequence[tuple[str, HistoryColumns]]) -> Histories:
        """From ``(user_id, columns)`` pairs, as the history store returns them."""
        return Histories.joined(
            [u for u, _ in users],
            [len(c) for _, c in users],
            HistoryColumns(
                list(chain.from_iterable(c.item_ids for _, c in users)),
                list(chain.from_iterable(c.actions for _, c in users)),
                list(chain.from_iterable(c.weights for _, c in users)),
                list(chain.from_iterable(c.ts for _, c in users)),
            ),
        )

    @staticmethod
    def joined(
        user_ids: Sequence[str], lengths: Sequence[int], entries: HistoryColumns
    ) -> Histories:
        """Users' histories of the given ``lengths``, one after the other in ``entries``."""
        return Histories(
            user_ids=user_ids,
            indptr=np.concatenate([[0], np.cumsum(lengths, dtype=np.intp)]).astype(np.intp),
            item_ids=entries.item_ids,
            actions=entries.actions,
            weights=entries.weights,
            ts=np.asarray(entries.ts, dtype=np.float64),
        )

    def columns_of(self, user: int) -> HistoryColumns:
        lo, hi = int(self.indptr[user]), int(self.indptr[user + 1])
        return HistoryColumns(
            list(self.item_ids[lo:hi]),
            list(self.actions[lo:hi]),
            list(self.weights[lo:hi]),
            self.ts[lo:hi].tolist(),
        )

    def __len__(self) -> int:
        return len(self.user_ids)

    def entries_of(self, user: int) -> list[HistoryEntry]:
        """One user's entries as objects (for the few users a baseline scores one by one)."""
        lo, hi = int(self.indptr[user]), int(self.indptr[user + 1])
        return [
            HistoryEntry("", self.item_ids[j], self.actions[j], self.weights[j], float(self.ts[j]))
            for j in range(lo, hi)
        ]


@dataclass(frozen=True, slots=True)
class _Columns:
    """A batch's histories as arrays the policy works on (see :func:`_columns`)."""

    owner: Rows  # per entry: its user
    rows: Rows  # per entry: its catalog row, -1 when unknown
    weights: Vector  # per entry: the policy's weight of the action
    newest: Vector  # per user: the newest entry's time (-inf without entries)
    user_rows: Rows  # per user: the trained vector's row, -1 when unknown


def _columns(model: ServingModel, histories: Histories, policy: Policy) -> _Columns:
    lengths = np.diff(histories.indptr)
    by_action = [policy.action_weights[a] for a in _ACTIONS]
    weights = np.fromiter(
        (
            w if w is not None else by_action[_ACTION_CODE[a]]
            for w, a in zip(histories.weights, histories.actions, strict=True)
        ),
        dtype=np.float64,
        count=len(histories.ts),
    )
    return _Columns(
        owner=np.repeat(np.arange(len(histories), dtype=np.intp), lengths),
        rows=model.item_rows(histories.item_ids),
        weights=weights,
        newest=_segment_max(histories.ts, histories.indptr),
        user_rows=model.user_rows(histories.user_ids),
    )


def _segment_max(values: Vector, indptr: Rows) -> Vector:
    """The maximum of each segment ``values[indptr[i]:indptr[i + 1]]``, ``-inf`` if empty."""
    out = np.full(len(indptr) - 1, -np.inf)
    filled = np.flatnonzero(np.diff(indptr) > 0)
    if len(filled):
        out[filled] = np.maximum.reduceat(values, indptr[filled])
    return out


def _segment_sum(values: Matrix, owner: Rows, n: int) -> tuple[Matrix, npt.NDArray[np.bool_]]:
    """Per owner (sorted), the sum of its rows of ``values`` added in order, and who has any."""
    counts = np.bincount(owner, minlength=n)
    has = counts > 0
    out = np.zeros((n, values.shape[1]))
    if len(values):
        starts = np.cumsum(counts) - counts
        out[has] = np.add.reduceat(values, starts[has], axis=0)
    return out, has


def _decay(policy: Policy, newest: Vector, ts: Vector) -> Vector:
    decay: Vector = 0.5 ** ((newest - ts) / policy.half_life_s)
    return decay


def _recent(
    model: ServingModel, histories: Histories, columns: _Columns, policy: Policy
) -> tuple[Matrix, npt.NDArray[np.bool_]]:
    """Per user, the decayed, weighted mean embedding of the known recent items, rescaled to
    the model's reference norm, and whether the user has one. Decay is relative to the user's
    newest action, so a list is a function of the history alone."""
    known = np.flatnonzero(columns.rows >= 0)
    owner = columns.owner[known]
    weights = columns.weights[known] * _decay(policy, columns.newest[owner], histories.ts[known])
    embedded = model.items[columns.rows[known], :-1].astype(np.float64) * weights[:, None]
    mean, has = _segment_sum(embedded, owner, len(histories))
    norm = np.sqrt(np.einsum("ij,ij->i", mean, mean))
    usable = has & (norm > 0) & np.isfinite(norm)
    scale = np.divide(model.reference_norm, norm, out=np.zeros_like(norm), where=usable)
    return mean * scale[:, None], usable


def _queries(
    model: ServingModel, histories: Histories, columns: _Columns, policy: Policy
) -> tuple[Matrix, list[Source]]:
    """Every user's query ``[q, 1]`` under the real-time policy (a row of NaN for a user with
    none: the popular items) and which branch produced it."""
    recent, has_recent = _recent(model, histories, columns, policy)
    trained_rows = columns.user_rows
    has_trained = trained_rows >= 0
    trained = model.users[np.maximum(trained_rows, 0), :-1].astype(np.float64)
    blend = has_trained & has_recent & (policy.blend != 0)
    q = np.where(has_trained[:, None], trained, recent)
    q[blend] = (1.0 - policy.blend) * trained[blend] + policy.blend * recent[blend]
    q = np.concatenate([q, np.ones((len(q), 1))], axis=1)
    q[~has_trained & ~has_recent] = np.nan
    sources = [
        (Source.BLEND if b else Source.MODEL) if t else (Source.RECENT if r else Source.POPULAR)
        for t, r, b in zip(has_trained.tolist(), has_recent.tolist(), blend.tolist(), strict=True)
    ]
    return q, sources


def _seen(model: ServingModel, columns: _Columns, users: Rows) -> Pairs:
    """The exclusions of the queried ``users`` (query ``j`` is user ``users[j]``): their
    training items and the known items of their history, as sorted unique pairs."""
    n = model.n_items
    query_of = np.full(len(columns.user_rows), -1, dtype=np.intp)
    query_of[users] = np.arange(len(users))
    live = np.flatnonzero((columns.rows >= 0) & (query_of[columns.owner] >= 0))
    live_keys = query_of[columns.owner[live]].astype(np.int64) * n + columns.rows[live]
    trained_rows = columns.user_rows[users]
    known = np.flatnonzero(trained_rows >= 0)
    indptr = model.user_items.indptr
    starts, stops = indptr[trained_rows[known]], indptr[trained_rows[known] + 1]
    counts = (stops - starts).astype(np.intp)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    items = model.user_items.indices[np.repeat(starts, counts) + offsets]
    trained_keys = np.repeat(known, counts).astype(np.int64) * n + items
    keys = np.unique(np.concatenate([live_keys, trained_keys]))
    return Pairs((keys // n).astype(np.intp), (keys % n).astype(np.intp))


def _bonus(
    model: ServingModel,
    histories: Histories,
    columns: _Columns,
    users: Rows,
    exclude: Pairs,
    policy: Policy,
) -> Pairs | None:
    """Each queried user's neighbour bonus: the items near their last ``neighbour_history``
    known items, each scored ``neighbour_weight`` x the decayed sum of its similarities
    (decay relative to the newest of those items; excluded items left out)."""
    neighbours = model.neighbours
    if neighbours is None or policy.neighbour_weight <= 0 or len(users) == 0:
        return None
    n = model.n_items
    query_of = np.full(len(columns.user_rows), -1, dtype=np.intp)
    query_of[users] = np.arange(len(users))
    known = np.flatnonzero((columns.rows >= 0) & (query_of[columns.owner] >= 0))
    owner = columns.owner[known]
    counts = np.bincount(owner, minlength=len(histories))
    position = np.arange(len(known)) - (np.cumsum(counts) - counts)[owner]
    last = known[position >= counts[owner] - policy.neighbour_history]
    if len(last) == 0:
        return None
    owner = columns.owner[last]
    newest = _segment_max(histories.ts[last], _indptr(owner, len(histories)))
    decay = _decay(policy, newest[owner], histories.ts[last])
    rows = neighbours.rows[columns.rows[last]].astype(np.intp)
    scores = neighbours.scores[columns.rows[last]] * (decay * policy.neighbour_weight)[:, None]
    queries = np.broadcast_to(query_of[owner][:, None], rows.shape)
    keys = queries.astype(np.int64) * n + rows
    held = exclude.holds(queries.ravel(), np.maximum(rows, 0).ravel(), n).reshape(rows.shape)
    valid = (rows >= 0) & ~held
    keys, scores = keys[valid], scores[valid]
    order = np.argsort(keys, kind="stable")
    keys, scores = keys[order], scores[order]
    unique, starts = np.unique(keys, return_index=True)
    summed = np.add.reduceat(scores, starts) if len(keys) else scores
    return Pairs(
        (unique // n).astype(np.intp), (unique % n).astype(np.intp), summed.astype(np.float32)
    )


def _indptr(owner: Rows, n: int) -> Rows:
    counts = np.bincount(owner, minlength=n)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)


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


def build_query(
    model: ServingModel, user_id: str, history: Sequence[HistoryEntry], policy: Policy
) -> tuple[Vector | None, Source]:
    """One user's query ``[q, 1]`` under the real-time policy (``None``: the popular items)."""
    histories = Histories.of([(user_id, history)])
    queries, sources = _queries(model, histories, _columns(model, histories, policy), policy)
    return (None if sources[0] is Source.POPULAR else queries[0]), sources[0]


def recent_vector(
    model: ServingModel, history: Sequence[HistoryEntry], policy: Policy
) -> Vector | None:
    """The decayed, weighted mean embedding of the user's known recent items, or ``None``."""
    histories = Histories.of([("", history)])
    recent, usable = _recent(model, histories, _columns(model, histories, policy), policy)
    return recent[0] if usable[0] else None


def score(
    model: ServingModel,
    histories: Histories,
    policy: Policy,
    *,
    query: QueryBuilder | None = None,
) -> list[Ranked]:
    """Each user's top-N under ``policy``, the whole batch at once (see the module docstring);
    ``query`` replaces the policy's query vectors by a baseline's (built user by user)."""
    columns = _columns(model, histories, policy)
    if query is None:
        queries, sources = _queries(model, histories, columns, policy)
    else:
        built = [
            query(model, u, histories.entries_of(i), policy)
            for i, u in enumerate(histories.user_ids)
        ]
        dim = model.items.shape[1]
        queries = np.stack([np.full(dim, np.nan) if v is None else v for v, _ in built])
        sources = [source for _, source in built]
    users = np.flatnonzero(~np.isnan(queries[:, -1]))
    exclude = _seen(model, columns, users) if policy.exclude_seen else Pairs.of([])
    bonus = _bonus(model, histories, columns, users, exclude, policy)
    selected = model.select(queries[users].astype(np.float32), exclude, policy.top_n, bonus)
    results: list[Ranked | None] = [None] * len(histories)
    items = model.ids_of(selected.items).tolist()
    scores = selected.scores.tolist()
    lengths = selected.lengths().tolist()
    for j, user in enumerate(users.tolist()):
        results[user] = Ranked(items[j][: lengths[j]], scores[j][: lengths[j]], sources[user])
    for user, ranked in enumerate(results):
        if ranked is None:
            results[user] = _popular(model, histories, user, policy)
    return [r for r in results if r is not None]


def _popular(model: ServingModel, histories: Histories, user: int, policy: Policy) -> Ranked:
    lo, hi = int(histories.indptr[user]), int(histories.indptr[user + 1])
    seen = set(histories.item_ids[lo:hi]) if policy.exclude_seen else set()
    return model.popular(exclude=seen, n=policy.top_n)


def recommend(
    model: ServingModel,
    users: Sequence[tuple[str, Sequence[HistoryEntry]]],
    policy: Policy,
    *,
    query: QueryBuilder | None = None,
) -> list[Ranked]:
    """Each ``(user_id, history)``'s top-N under ``policy``: :func:`score` of the batch."""
    return score(model, Histories.of(users), policy, query=query)
