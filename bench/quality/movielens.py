"""MovieLens ratings as the quality benchmarks use them: positives, splits, metrics, logs.

Protocol (docs/quality.md): ratings >= 4 are positives; the per-user random split holds out a
seeded 20 % of each user's positives; the temporal split keeps the first 80 % of all positives
by time for training and replays the rest in order. Every method is evaluated on the same
matrices, over the items seen in training, with each user's training items excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import scipy.sparse as sp

from reco_common.interactions import ITEM_ID, TS, USER_ID, WEIGHT, write_log
from reco_trainer.evaluation import EvalSet, Scorer, evaluate, factor_scorer

_DATASET = Path("shared/datasets/ml-latest-small/ratings.csv")
# The repository's sibling ``shared/`` (found from a worktree too); ``--ratings`` overrides.
DEFAULT_RATINGS = next(
    (p / _DATASET for p in Path(__file__).resolve().parents if (p / _DATASET).is_file()),
    _DATASET,
)
MIN_RATING = 4.0
KS = (5, 10)
SHOWN = ("precision@5", "precision@10", "recall@10", "ndcg@10")


def load_positives(path: Path = DEFAULT_RATINGS, min_rating: float = MIN_RATING) -> pa.Table:
    """``user_id, item_id, weight (the rating), ts`` of the positive ratings, sorted by time."""
    raw = pacsv.read_csv(path)
    raw = raw.filter(pc.greater_equal(raw.column("rating"), min_rating))
    table = pa.table(
        {
            USER_ID: pc.cast(raw.column("userId"), pa.string()),
            ITEM_ID: pc.cast(raw.column("movieId"), pa.string()),
            WEIGHT: pc.cast(raw.column("rating"), pa.float64()),
            TS: pc.cast(raw.column("timestamp"), pa.float64()),
        }
    )
    order = np.lexsort((np.arange(len(table)), table.column(TS).to_numpy()))
    return table.take(pa.array(order))


def per_user_split(
    table: pa.Table, *, seed: int, fraction: float = 0.2
) -> tuple[pa.Table, pa.Table]:
    """Hold out a seeded ``fraction`` (rounded) of each user's rows."""
    users = np.unique(table.column(USER_ID).to_numpy(zero_copy_only=False), return_inverse=True)[1]
    order = np.lexsort((np.random.default_rng(seed).random(len(table)), users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    counts = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    held = np.zeros(len(table), dtype=np.bool_)
    held[order] = rank < np.repeat(np.round(fraction * counts), counts)
    return table.filter(pa.array(~held)), table.filter(pa.array(held))


def temporal_split(table: pa.Table, fraction: float = 0.2) -> tuple[pa.Table, pa.Table]:
    """The first ``1 - fraction`` of the (time-sorted) rows, and the rest."""
    cut = len(table) - round(fraction * len(table))
    return table.slice(0, cut), table.slice(cut)


def user_disjoint_split(
    table: pa.Table, *, seed: int, fraction: float = 0.5
) -> tuple[pa.Table, pa.Table]:
    """The rows of a seeded ``1 - fraction`` of the users, and those of the others."""
    users = np.unique(table.column(USER_ID).to_numpy(zero_copy_only=False))
    chosen = np.random.default_rng(seed).choice(users, round(fraction * len(users)), replace=False)
    mask = pc.is_in(table.column(USER_ID), value_set=pa.array(chosen))
    return table.filter(pc.invert(mask)), table.filter(mask)


def write_native(table: pa.Table, path: Path) -> str:
    """The rows as a log file the trainer and the worker read as they are."""
    return write_log(table, str(path))


@dataclass(frozen=True, slots=True)
class Matrices:
    """Train and test as matrices over the training vocabulary (test pairs outside it dropped)."""

    users: list[str]
    items: list[str]
    train: sp.csr_matrix
    test: sp.csr_matrix

    @staticmethod
    def of(train: pa.Table, test: pa.Table) -> Matrices:
        users = sorted(set(train.column(USER_ID).to_pylist()))
        items = sorted(set(train.column(ITEM_ID).to_pylist()))
        return Matrices(users, items, matrix(train, users, items), matrix(test, users, items))

    def eval_set(self) -> EvalSet:
        return EvalSet.build(known=self.train, held_out=self.test)

    def align(
        self,
        user_ids: list[str],
        item_ids: list[str],
        user_factors: npt.NDArray[np.float32],
        item_factors: npt.NDArray[np.float32],
    ) -> Scorer:
        """A scorer over these matrices from a model's own id order (missing ids score -inf)."""
        u_index = {u: i for i, u in enumerate(user_ids)}
        i_index = {v: i for i, v in enumerate(item_ids)}
        width = user_factors.shape[1]
        users = np.zeros((len(self.users), width), dtype=np.float32)
        items = np.zeros((len(self.items), width), dtype=np.float32)
        items[:, -1] = -np.inf
        for row, user in enumerate(self.users):
            if user in u_index:
                users[row] = user_factors[u_index[user]]
        for row, item in enumerate(self.items):
            if item in i_index:
                items[row] = item_factors[i_index[item]]
        return factor_scorer(users, items)


def matrix(table: pa.Table, users: list[str], items: list[str]) -> sp.csr_matrix:
    u = pc.fill_null(pc.index_in(table.column(USER_ID), value_set=pa.array(users)), -1).to_numpy()
    i = pc.fill_null(pc.index_in(table.column(ITEM_ID), value_set=pa.array(items)), -1).to_numpy()
    keep = (u >= 0) & (i >= 0)
    m = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (u[keep], i[keep])),
        shape=(len(users), len(items)),
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def metrics(score: Scorer, data: EvalSet) -> dict[str, float]:
    return {k: v for k, v in evaluate(score, data, ks=KS, auc=False).items() if k in SHOWN}
