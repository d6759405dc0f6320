from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from reco_trainer.evaluation import (
    EvalSet,
    evaluate,
    factor_scorer,
    popularity_scorer,
    popularity_scores,
    top_k,
)


def _csr(rows: list[list[float]]) -> sp.csr_matrix:
    return sp.csr_matrix(np.array(rows, dtype=np.float32))


def _fixed(scores: list[list[float]]):  # type: ignore[no-untyped-def]
    table = np.array(scores, dtype=np.float32)
    return lambda users: table[users]


# Two users, three items, worked out by hand:
#   user 0 knows item 0, held-out {2}, scores [.9, .5, .8] → ranking 2, 1 (item 0 excluded)
#   user 1 knows nothing, held-out {0, 1}, scores [.1, .9, .5] → ranking 1, 2, 0
KNOWN = [[1, 0, 0], [0, 0, 0]]
HELD_OUT = [[0, 0, 1], [1, 1, 0]]
SCORES = [[0.9, 0.5, 0.8], [0.1, 0.9, 0.5]]


def test_metrics_match_the_hand_computed_case() -> None:
    data = EvalSet.build(known=_csr(KNOWN), held_out=_csr(HELD_OUT))
    got = evaluate(_fixed(SCORES), data, ks=(1, 2))
    ndcg2_user1 = 1.0 / (1.0 + 1.0 / math.log2(3))
    expected = {
        "precision@1": 1.0,
        "recall@1": (1.0 + 0.5) / 2,
        "ndcg@1": 1.0,
        "precision@2": (0.5 + 0.5) / 2,
        "recall@2": (1.0 + 0.5) / 2,
        "ndcg@2": (1.0 + ndcg2_user1) / 2,
        "auc": (1.0 + 0.5) / 2,
    }
    assert got == pytest.approx(expected)


def test_known_items_are_excluded_from_the_ranking() -> None:
    # Without exclusion user 0's top-1 would be the known item 0 and miss.
    data = EvalSet.build(known=_csr([[1, 0, 0]]), held_out=_csr([[0, 0, 1]]))
    assert evaluate(_fixed([[0.9, 0.5, 0.8]]), data, ks=(1,))["precision@1"] == 1.0


def test_held_out_items_already_known_are_not_relevant() -> None:
    data = EvalSet.build(known=_csr([[1, 0], [0, 0]]), held_out=_csr([[1, 0], [0, 1]]))
    assert data.users.tolist() == [1]
    assert data.n_pairs == 1


def test_auc_counts_ties_as_half_and_batches_agree() -> None:
    data = EvalSet.build(known=_csr([[0, 0, 0]]), held_out=_csr([[1, 0, 0]]))
    assert evaluate(_fixed([[0.5, 0.5, 0.1]]), data, ks=(1,))["auc"] == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    known = sp.random(40, 30, density=0.2, random_state=1, format="csr")
    held = sp.random(40, 30, density=0.2, random_state=2, format="csr")
    scores = rng.random((40, 30)).astype(np.float32)
    many = EvalSet.build(known=known, held_out=held)
    small = evaluate(_fixed(scores.tolist()), many, ks=(5, 10), batch_users=3)
    large = evaluate(_fixed(scores.tolist()), many, ks=(5, 10), batch_users=1000)
    assert small == pytest.approx(large)


def test_auc_against_a_brute_force_count() -> None:
    rng = np.random.default_rng(3)
    known = (rng.random((12, 20)) < 0.2).astype(np.float32)
    held = (rng.random((12, 20)) < 0.25).astype(np.float32)
    scores = rng.integers(0, 5, (12, 20)).astype(np.float32)  # many ties on purpose
    data = EvalSet.build(known=sp.csr_matrix(known), held_out=sp.csr_matrix(held))
    expected = []
    for u in data.users:
        pos = [i for i in range(20) if held[u, i] and not known[u, i]]
        neg = [i for i in range(20) if not held[u, i] and not known[u, i]]
        pairs = [
            (scores[u, p] > scores[u, n]) + 0.5 * (scores[u, p] == scores[u, n])
            for p in pos
            for n in neg
        ]
        expected.append(np.mean(pairs))
    got = evaluate(_fixed(scores.tolist()), data, ks=(5,))["auc"]
    assert got == pytest.approx(float(np.mean(expected)))


def test_top_k_orders_best_first_and_ties_by_lower_index() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0]], dtype=np.float32)
    assert top_k(scores, 4).tolist() == [[1, 2, 4, 3]]
    assert top_k(scores, 2).tolist() in ([[1, 2]], [[1, 4]], [[2, 4]])
    assert top_k(scores, 10).shape == (1, 5)


def test_popularity_baseline_ranks_by_summed_weight_for_everyone() -> None:
    train = _csr([[1, 0, 4], [2, 2, 0], [0, 0, 1]])
    popularity = popularity_scores(train)
    assert popularity.tolist() == [3.0, 2.0, 5.0]
    scores = popularity_scorer(popularity)(np.array([0, 2]))
    assert scores.tolist() == [[3.0, 2.0, 5.0], [3.0, 2.0, 5.0]]
    # user 0 knows items 0 and 2, so popularity recommends item 1 (held out): a hit at 1.
    data = EvalSet.build(known=train, held_out=_csr([[0, 1, 0], [0, 0, 1], [1, 0, 0]]))
    got = evaluate(popularity_scorer(popularity), data, ks=(1,))
    # user 1 knows 0 and 1 → gets 2 (hit); user 2 knows 2 → gets 0, more popular than 1 (hit).
    assert got["precision@1"] == 1.0


def test_factor_scorer_is_dot_product_plus_item_bias() -> None:
    users = np.array([[1.0, 2.0, 9.0]], dtype=np.float32)  # the user's own bias is ignored
    items = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]], dtype=np.float32)
    assert factor_scorer(users, items)(np.array([0])).tolist() == [[1.5, 1.0]]


def test_sampling_caps_the_evaluated_users_deterministically() -> None:
    held = sp.csr_matrix(np.eye(50, dtype=np.float32))
    known = sp.csr_matrix((50, 50), dtype=np.float32)
    a = EvalSet.build(known=known, held_out=held, max_users=10, seed=1)
    b = EvalSet.build(known=known, held_out=held, max_users=10, seed=1)
    assert a.users.size == 10
    assert a.users.tolist() == b.users.tolist()


def test_nothing_to_evaluate_is_an_error() -> None:
    data = EvalSet.build(known=_csr([[1]]), held_out=_csr([[1]]))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(_fixed([[1.0]]), data, ks=(1,))


def test_auc_can_be_skipped() -> None:
    data = EvalSet.build(known=_csr(KNOWN), held_out=_csr(HELD_OUT))
    got = evaluate(_fixed(SCORES), data, ks=(1,), auc=False)
    assert set(got) == {"precision@1", "recall@1", "ndcg@1"}
