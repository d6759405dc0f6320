"""Ranking metrics on a held-out split, for the model and the popularity baseline alike.

For each evaluated user every item is ranked except the user's known (training) items;
``precision@k``, ``recall@k`` and ``ndcg@k`` (binary relevance) are averaged over users with at
least one held-out item, and ``auc`` is the per-user probability that a held-out item scores
above an item the user never touched (ties count one half), averaged likewise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

Scores = npt.NDArray[np.float32]
Scorer = Callable[[npt.NDArray[np.int64]], Scores]
"""Scores ``[len(users), n_items]`` for the given user rows; the caller may modify them."""

_AUC_CHUNK = 256


@dataclass(frozen=True, slots=True)
class EvalSet:
    """``known``: what each user interacted with before (excluded from the ranking);
    ``relevant``: the held-out items, without the known ones; ``users``: rows evaluated."""

    known: sp.csr_matrix
    relevant: sp.csr_matrix
    users: npt.NDArray[np.int64]

    @staticmethod
    def build(
        *,
        known: sp.csr_matrix,
        held_out: sp.csr_matrix,
        max_users: int | None = None,
        seed: int = 0,
    ) -> EvalSet:
        """Held-out pairs minus known ones; at most ``max_users`` users (a seeded sample)."""
        relevant = (held_out > 0).astype(np.float32) - (known > 0).astype(np.float32)
        relevant = sp.csr_matrix(relevant > 0, dtype=np.float32)
        users = np.flatnonzero(np.diff(relevant.indptr) > 0).astype(np.int64)
        if max_users is not None and users.size > max_users:
            users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
        return EvalSet(
            known=sp.csr_matrix(known > 0, dtype=np.float32), relevant=relevant, users=users
        )

    @property
    def n_pairs(self) -> int:
        return int(self.relevant[self.users].nnz)


def metric_names(ks: Sequence[int], *, auc: bool = True) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("precision", "recall", "ndcg")] + (
        ["auc"] if auc else []
    )


def evaluate(
    score: Scorer,
    data: EvalSet,
    *,
    ks: Sequence[int],
    auc: bool = True,
    batch_users: int = 1024,
) -> dict[str, float]:
    """The metrics of ``score`` on ``data`` (see the module docstring); empty data is an error.

    ``auc=False`` skips the costliest metric (e.g. for the per-epoch validation).
    """
    if data.users.size == 0:
        raise ValueError(
            "no user has a held-out item that is not already known: nothing to evaluate"
        )
    totals = dict.fromkeys(metric_names(ks, auc=auc), 0.0)
    for start in range(0, data.users.size, batch_users):
        rows = data.users[start : start + batch_users]
        scores = np.array(score(rows), dtype=np.float32)
        known = data.known[rows]
        scores[known.nonzero()] = -np.inf
        relevant = data.relevant[rows].toarray() > 0
        for name, value in _batch_metrics(scores, relevant, ks, auc=auc).items():
            totals[name] += value
    return {name: total / data.users.size for name, total in totals.items()}


def _batch_metrics(
    scores: Scores, relevant: npt.NDArray[np.bool_], ks: Sequence[int], *, auc: bool
) -> dict[str, float]:
    top = top_k(scores, max(ks))
    hits = np.take_along_axis(relevant, top, axis=1)
    n_relevant = relevant.sum(axis=1)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    ideal = np.cumsum(discounts)
    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        n_hits = h.sum(axis=1)
        out[f"precision@{k}"] = float((n_hits / k).sum())
        out[f"recall@{k}"] = float((n_hits / n_relevant).sum())
        dcg = (h * discounts[: h.shape[1]]).sum(axis=1)
        out[f"ndcg@{k}"] = float((dcg / ideal[np.minimum(n_relevant, h.shape[1]) - 1]).sum())
    if auc:
        out["auc"] = float(_auc(scores, relevant).sum())
    return out


def top_k(scores: Scores, k: int) -> npt.NDArray[np.int64]:
    """Per row, the indices of the ``k`` best scores, best first, ties by lower index (which
    of several items tied at the cut-off make it into the top ``k`` is unspecified)."""
    n = scores.shape[1]
    k = min(k, n)
    part = np.argpartition(scores, n - k, axis=1)[:, n - k :]
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=-1)
    chosen: npt.NDArray[np.int64] = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return chosen


def _auc(scores: Scores, relevant: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Per-row AUC of the relevant items against the candidates that are not relevant.

    Known items carry ``-inf`` and never count. For each relevant item every candidate scoring
    above it counts 1 and every tie 1/2; the positives among them contribute exactly
    ``n_pos² / 2`` in total (each pair once, each item against itself 1/2), which is taken off
    instead of masking them out. A row without negatives scores 1.
    """
    n_pos = relevant.sum(axis=1)
    n_neg = np.isfinite(scores).sum(axis=1) - n_pos
    rows, cols = np.nonzero(relevant)
    positive_scores = scores[rows, cols]
    wrong = np.zeros(scores.shape[0], dtype=np.float64)
    for start in range(0, rows.size, _AUC_CHUNK):
        r = rows[start : start + _AUC_CHUNK]
        s = positive_scores[start : start + _AUC_CHUNK, None]
        row_scores = scores[r]
        above = np.count_nonzero(row_scores > s, axis=1)
        tied = np.count_nonzero(row_scores == s, axis=1)
        np.add.at(wrong, r, above + 0.5 * tied)
    wrong -= n_pos.astype(np.float64) ** 2 / 2
    pairs = (n_pos * n_neg).astype(np.float64)
    auc = np.ones(scores.shape[0], dtype=np.float64)
    np.divide(pairs - wrong, pairs, out=auc, where=pairs > 0)
    return auc


def popularity_scores(train: sp.csr_matrix) -> npt.NDArray[np.float32]:
    """Each item's popularity in ``train``: the sum of its interaction weights."""
    return np.asarray(train.sum(axis=0), dtype=np.float32).ravel()


def popularity_scorer(popularity: npt.NDArray[np.float32]) -> Scorer:
    """The baseline: the same popularity ranking for every user."""

    def score(users: npt.NDArray[np.int64]) -> Scores:
        return np.tile(popularity, (users.size, 1))

    return score


def factor_scorer(user_factors: Scores, item_factors: Scores) -> Scorer:
    """The serving computation: ``[u, 1] · [v, b]``, i.e. user·item representation + item bias."""
    items = np.ascontiguousarray(item_factors.T)

    def score(users: npt.NDArray[np.int64]) -> Scores:
        query = user_factors[users].copy()
        query[:, -1] = 1.0
        return np.asarray(query @ items, dtype=np.float32)

    return score
