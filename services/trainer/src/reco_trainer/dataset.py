"""From interaction logs to LightFM's inputs: splits, id maps, sparse matrices and features.

External ids are strings; LightFM wants contiguous indices. A :class:`Vocab` maps one to the
other (in order of first appearance, so a sorted log always gives the same map). Interactions
of ids outside the vocabulary (users or items first seen in the held-out part) are dropped from
the matrices: the model cannot rank them and the evaluation does not pretend it could.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from reco_common.interactions import Interactions, InteractionsError
from reco_trainer.params import SplitKind, TrainParams, Weighting

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Vocab:
    """External ids in index order."""

    ids: pa.Array

    @staticmethod
    def of(values: pa.ChunkedArray | pa.Array) -> Vocab:
        return Vocab(pc.unique(values))

    def __len__(self) -> int:
        return len(self.ids)

    def codes(self, values: pa.ChunkedArray) -> npt.NDArray[np.int64]:
        """Index of each value, ``-1`` for values outside the vocabulary."""
        index = pc.index_in(values, value_set=self.ids)
        return np.asarray(pc.fill_null(index, -1).to_numpy(), dtype=np.int64)

    def to_list(self) -> list[str]:
        return [str(v) for v in self.ids.to_pylist()]


@dataclass(frozen=True, slots=True)
class Split:
    """The part a model learns from and the part it is judged on."""

    train: Interactions
    held_out: Interactions
    kind: SplitKind


def split(log: Interactions, *, kind: SplitKind, fraction: float, seed: int) -> Split:
    """Hold out the newest ``fraction`` of the log (temporal) or a seeded random ``fraction``."""
    kind = resolve_kind(log, kind)
    n = len(log)
    n_held = round(n * fraction)
    if n_held < 1 or n_held >= n:
        raise InteractionsError(
            f"{n} interactions cannot be split {1 - fraction:.0%}/{fraction:.0%}: "
            "one side would be empty"
        )
    if kind is SplitKind.TEMPORAL:
        held = np.zeros(n, dtype=np.bool_)
        held[n - n_held :] = True  # the log is sorted by time
    else:
        held = np.zeros(n, dtype=np.bool_)
        held[np.random.default_rng(seed).choice(n, n_held, replace=False)] = True
    return Split(train=log.take(~held), held_out=log.take(held), kind=kind)


def split_per_user(log: Interactions, *, kind: SplitKind, fraction: float, seed: int) -> Split:
    """Hold out ``fraction`` (rounded) of each user's interactions: their newest (temporal) or a
    seeded random subset. Every active user is in the held-out part, so a metric over it moves
    in fine steps (a global split of the same size covers far fewer users)."""
    kind = resolve_kind(log, kind)
    users = np.asarray(pc.dictionary_encode(log.user_ids()).combine_chunks().indices)
    n = len(log)
    # The log is sorted by time, so ``-position`` puts each user's newest first.
    newest_first = kind is SplitKind.TEMPORAL
    within = -np.arange(n) if newest_first else np.random.default_rng(seed).random(n)
    order = np.lexsort((within, users))
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    held = np.zeros(n, dtype=np.bool_)
    held[order] = rank < np.repeat(np.round(fraction * counts), counts)
    return Split(train=log.take(~held), held_out=log.take(held), kind=kind)


def resolve_kind(log: Interactions, kind: SplitKind) -> SplitKind:
    if kind is SplitKind.AUTO:
        return SplitKind.TEMPORAL if log.has_timestamps else SplitKind.RANDOM
    if kind is SplitKind.TEMPORAL and not log.has_timestamps:
        raise InteractionsError(
            "a temporal split needs a timestamp on every interaction; use --split random"
        )
    return kind


def matrix(log: Interactions, users: Vocab, items: Vocab) -> sp.csr_matrix:
    """``[n_users, n_items]`` with each pair's summed weights; unknown ids are dropped."""
    u = users.codes(log.user_ids())
    i = items.codes(log.item_ids())
    keep = (u >= 0) & (i >= 0)
    m = sp.csr_matrix(
        (log.weights()[keep], (u[keep], i[keep])),
        shape=(len(users), len(items)),
        dtype=np.float32,
    )
    m.sum_duplicates()
    return m


@dataclass(frozen=True, slots=True)
class LightfmInput:
    """Binary interactions and their sample weights, in the same COO order."""

    interactions: sp.coo_matrix
    weights: sp.coo_matrix


def lightfm_input(summed: sp.csr_matrix, weighting: Weighting) -> LightfmInput:
    coo = summed.tocoo()
    if weighting is Weighting.LOG:
        data = np.log1p(coo.data)
    elif weighting is Weighting.BINARY:
        data = np.ones_like(coo.data)
    elif weighting is Weighting.LINEAR:
        data = coo.data
    else:
        raise ValueError(f"weighting {weighting.value!r}: resolve it from the data first")
    ones = sp.coo_matrix((np.ones_like(coo.data), (coo.row, coo.col)), shape=coo.shape)
    weights = sp.coo_matrix((data.astype(np.float32), (coo.row, coo.col)), shape=coo.shape)
    return LightfmInput(interactions=ones, weights=weights)


def feature_matrix(vocab: Vocab, table: pa.Table | None, *, id_column: str) -> sp.csr_matrix | None:
    """Identity plus one-hot ``column=value`` features, rows normalised to sum 1; ``None``
    without a feature table (LightFM then uses the identity itself)."""
    if table is None:
        return None
    rows = vocab.codes(table.column(id_column))
    known = rows >= 0
    names: list[str] = []
    cols: list[npt.NDArray[np.int64]] = []
    row_parts: list[npt.NDArray[np.int64]] = []
    for column in table.column_names:
        if column == id_column:
            continue
        values = pc.binary_join_element_wise(f"{column}=", table.column(column), "")
        kept = pc.filter(
            values, pa.array(known & pc.is_valid(values).to_numpy(zero_copy_only=False))
        )
        feature_vocab = Vocab.of(kept)
        cols.append(feature_vocab.codes(kept) + len(vocab) + len(names))
        row_parts.append(rows[known & pc.is_valid(values).to_numpy(zero_copy_only=False)])
        names.extend(feature_vocab.to_list())
    n_features = len(vocab) + len(names)
    identity = np.arange(len(vocab), dtype=np.int64)
    r = np.concatenate([identity, *row_parts])
    c = np.concatenate([identity, *cols])
    m = sp.csr_matrix((np.ones(r.size, dtype=np.float32), (r, c)), shape=(len(vocab), n_features))
    m.sum_duplicates()
    m.data[:] = 1.0
    row_sums = np.asarray(m.sum(axis=1)).ravel()
    m = sp.csr_matrix(sp.diags(1.0 / row_sums) @ m, dtype=np.float32)
    logger.info("%s features: %d rows, %d one-hot features", id_column, len(vocab), len(names))
    return m


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything training and evaluation need, derived from the logs and the parameters."""

    users: Vocab
    items: Vocab
    fit: sp.csr_matrix
    validation: sp.csr_matrix | None
    test: sp.csr_matrix
    known_at_test: sp.csr_matrix
    split_kind: SplitKind


def prepare(
    train: Interactions, test: Interactions, params: TrainParams, kind: SplitKind
) -> Prepared:
    """Carve the validation part out of ``train`` (for early stopping: each user's newest or a
    random share of their interactions, see :func:`split_per_user`) and build the matrices."""
    fit_log, validation_log = train, None
    if params.early_stopping:
        inner = split_per_user(
            train,
            kind=kind if params.validation_split is SplitKind.AUTO else params.validation_split,
            fraction=params.validation_fraction,
            seed=params.seed + 1,
        )
        fit_log, validation_log = inner.train, inner.held_out
    users, items = Vocab.of(fit_log.user_ids()), Vocab.of(fit_log.item_ids())
    fit = matrix(fit_log, users, items)
    validation = matrix(validation_log, users, items) if validation_log is not None else None
    known = fit if validation is None else fit + validation
    logger.info(
        "split %s: %d users, %d items, %d fit pairs, %d validation, %d test interactions",
        kind.value,
        len(users),
        len(items),
        fit.nnz,
        0 if validation is None else validation.nnz,
        len(test),
    )
    return Prepared(
        users=users,
        items=items,
        fit=fit,
        validation=validation,
        test=matrix(test, users, items),
        known_at_test=known,
        split_kind=kind,
    )
