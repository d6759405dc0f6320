"""The cut of a score matrix's rows to their k best columns (``reco_worker.topn.top_columns``)."""

from __future__ import annotations

import numpy as np
import pytest

from reco_worker.topn import GROUP_COLUMNS, GROUPS_PER_K, Pairs, top_columns


def best_values(scores: np.ndarray, k: int) -> list[list[float]]:
    """Each row's k largest values, largest first (what any exact cut must hold)."""
    return (-np.sort(-scores, axis=1)[:, :k]).tolist()


def chosen_values(scores: np.ndarray, columns: np.ndarray) -> list[list[float]]:
    return (-np.sort(-np.take_along_axis(scores, columns, axis=1), axis=1)).tolist()


@pytest.mark.parametrize("width", [5000, 5003, 5007])  # whole groups, and columns past them
@pytest.mark.parametrize("k", [1, 20, 116])
def test_the_cut_holds_the_k_largest_values_of_each_row(width: int, k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.standard_normal((50, width)).astype(np.float32)
    scores[3, -1] = 100.0  # the best value past the last whole group
    scores[4, :k] = 50.0 + np.arange(k)  # all the best in the first columns (a few groups)
    columns = top_columns(scores, k)
    assert columns.shape == (50, k)
    assert all(len(set(row)) == k for row in columns.tolist())
    assert chosen_values(scores, columns) == best_values(scores, k)


def test_ties_and_excluded_columns_are_cut_like_a_full_partition() -> None:
    rng = np.random.default_rng(0)
    k = 40
    scores = rng.integers(0, 4, (30, 4001)).astype(np.float32)  # mostly ties
    scores[0] = -np.inf  # everything excluded
    scores[1, :] = -np.inf
    scores[1, rng.choice(4001, size=k // 2, replace=False)] = 1.0  # fewer left than k
    scores[2, ::2] = -np.inf  # every other column excluded
    columns = top_columns(scores, k)
    assert all(len(set(row)) == k for row in columns.tolist())
    assert chosen_values(scores, columns) == best_values(scores, k)


def test_a_row_with_few_groups_is_cut_whole() -> None:
    k = 10
    width = GROUP_COLUMNS * GROUPS_PER_K * k - 1  # one column short of the grouped cut
    scores = np.random.default_rng(1).standard_normal((5, width)).astype(np.float32)
    assert chosen_values(scores, top_columns(scores, k)) == best_values(scores, k)


def test_pairs_hold_exactly_their_own_query_row_pairs() -> None:
    rng = np.random.default_rng(11)
    rows = [np.unique(rng.integers(0, 50, int(rng.integers(0, 12)))) for _ in range(9)]
    pairs = Pairs.of(rows)
    queries = rng.integers(0, 9, 400)
    looked_up = rng.integers(0, 50, 400)
    expected = [
        int(r) in set(rows[int(q)].tolist()) for q, r in zip(queries, looked_up, strict=True)
    ]
    assert pairs.holds(queries, looked_up, 50).tolist() == expected
    assert any(expected)
    assert not all(expected)
    assert not Pairs.of([]).holds(queries, looked_up, 50).any()
