"""The real-time policy and top-N selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from worker_models import clustered_arrays, random_arrays

from reco_common.artifact import ItemNeighbours, UserItems
from reco_common.contracts import ActionType, HistoryEntry
from reco_worker.scoring import (
    Policy,
    ServingModel,
    Source,
    naive_query,
    recent_vector,
    recommend,
)
from reco_worker.topn import Selection, TopSelector

T0 = 1_800_000_000.0


def entry(item: str, *, ts: float = T0, action: ActionType = ActionType.VIEW) -> HistoryEntry:
    return HistoryEntry(event_id=f"e-{item}-{ts}", item_id=item, action=action, weight=None, ts=ts)


def cluster_share(items: list[str], cluster: int) -> float:
    return sum(i.startswith(f"i{cluster}-") for i in items) / len(items)


def test_a_known_user_without_history_gets_the_trained_ranking(clustered: ServingModel) -> None:
    (ranked,) = recommend(clustered, [("u0", [])], Policy(top_n=10))
    assert ranked.source is Source.MODEL
    assert cluster_share(ranked.items, 0) == 1.0
    assert ranked.scores == sorted(ranked.scores, reverse=True)


def test_a_new_action_moves_the_list_towards_what_was_just_done(clustered: ServingModel) -> None:
    history = [entry("i2-0"), entry("i2-1")]
    (before,) = recommend(clustered, [("u0", [])], Policy(top_n=20))
    (after,) = recommend(clustered, [("u0", history)], Policy(top_n=20, blend=0.6))
    assert after.source is Source.BLEND
    assert cluster_share(before.items, 2) == 0.0
    assert cluster_share(after.items, 2) > 0.5
    assert not {"i2-0", "i2-1"} & set(after.items)


def test_blend_zero_only_removes_what_was_seen(clustered: ServingModel) -> None:
    (before,) = recommend(clustered, [("u0", [])], Policy(top_n=10))
    (after,) = recommend(clustered, [("u0", [entry(before.items[0])])], Policy(top_n=10, blend=0))
    assert after.source is Source.MODEL
    assert before.items[0] not in after.items
    assert after.items[:9] == before.items[1:10]


def test_a_cold_start_user_is_served_from_recent_items(clustered: ServingModel) -> None:
    (ranked,) = recommend(clustered, [("stranger", [entry("i3-4")])], Policy(top_n=10))
    assert ranked.source is Source.RECENT
    assert cluster_share(ranked.items, 3) == 1.0
    assert "i3-4" not in ranked.items


def test_without_usable_history_the_popular_items_are_served(clustered: ServingModel) -> None:
    history = [entry("not-in-the-catalog"), entry(clustered.popular_items[0])]
    (nothing,) = recommend(clustered, [("stranger", history[:1])], Policy(top_n=5))
    assert nothing.source is Source.POPULAR
    assert nothing.items == clustered.popular_items[:5]
    (some,) = recommend(clustered, [("stranger", history)], Policy(top_n=5))
    assert some.source is Source.RECENT


def test_unknown_items_are_ignored_by_the_aggregate(clustered: ServingModel) -> None:
    policy = Policy()
    known = recent_vector(clustered, [entry("i1-0")], policy)
    mixed = recent_vector(clustered, [entry("i1-0"), entry("nope", ts=T0 + 5)], policy)
    assert known is not None
    assert mixed is not None
    np.testing.assert_allclose(known, mixed)


def test_recent_and_heavier_actions_weigh_more(clustered: ServingModel) -> None:
    policy = Policy(half_life_s=60.0, blend=1.0, top_n=10)
    old_view_new_view = [entry("i1-0", ts=T0), entry("i2-0", ts=T0 + 600)]
    (recent_wins,) = recommend(clustered, [("stranger", old_view_new_view)], policy)
    assert cluster_share(recent_wins.items, 2) == 1.0
    purchase_then_view = [
        entry("i1-0", ts=T0, action=ActionType.PURCHASE),
        entry("i2-0", ts=T0 + 10),
    ]
    (purchase_wins,) = recommend(clustered, [("stranger", purchase_then_view)], policy)
    assert cluster_share(purchase_wins.items, 1) == 1.0


def test_an_explicit_weight_overrides_the_action_weight() -> None:
    policy = Policy(action_weights={a: 1.0 for a in ActionType})
    plain = HistoryEntry("e1", "i", ActionType.VIEW, None, T0)
    heavy = HistoryEntry("e2", "i", ActionType.VIEW, 7.5, T0)
    assert policy.weight(plain) == 1.0
    assert policy.weight(heavy) == 7.5


def test_a_list_is_the_same_whatever_batch_it_was_scored_in() -> None:
    model = ServingModel(
        name="m",
        version="v",
        uri="file:///m",
        arrays=random_arrays(n_items=3000, n_users=200, dim=16),
    )
    policy = Policy(top_n=50)
    users = [(f"u{n}", [entry(f"i{n * 7}", ts=T0 + n)]) for n in range(120)]
    batched = recommend(model, users, policy)
    for n in (0, 1, 57, 119):
        (alone,) = recommend(model, [users[n]], policy)
        assert alone.items == batched[n].items
        assert alone.scores == batched[n].scores


def rows_of(selection: Selection) -> list[list[int]]:
    return [r[:n].tolist() for r, n in zip(selection.items, selection.lengths(), strict=True)]


@pytest.mark.parametrize("n", [1, 10, 100])
def test_the_sampled_selection_equals_the_exact_one(n: int) -> None:
    items = random_arrays(n_items=20_000, n_users=1, dim=8, seed=3).item_factors
    exact = TopSelector(items, exact_max=10**9)
    sampled = TopSelector(items, exact_max=0, sample_size=2048, block_cells=40 * 3000)
    rng = np.random.default_rng(1)
    queries = np.concatenate([rng.standard_normal((40, 8)), np.ones((40, 1))], axis=1)
    queries = queries.astype(np.float32)
    exclude = [np.sort(rng.choice(len(items), size=s, replace=False)) for s in range(0, 80, 2)]
    a, b = exact.select(queries, exclude, n), sampled.select(queries, exclude, n)
    assert rows_of(a) == rows_of(b)
    assert a.scores.tolist() == b.scores.tolist()
    for rows, excluded in zip(rows_of(b), exclude, strict=True):
        assert len(rows) == n
        assert not set(rows) & set(excluded.tolist())


def test_an_unlucky_sample_falls_back_to_an_exact_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    items = random_arrays(n_items=5000, n_users=1, dim=4, seed=5).item_factors
    exact = TopSelector(items, exact_max=10**9)
    sampled = TopSelector(items, exact_max=0, sample_size=256, block_cells=3 * 1000)
    # A threshold no item reaches: what a sample full of the very best items would give.
    monkeypatch.setattr(TopSelector, "_thresholds", lambda self, q, wanted: np.full(len(q), np.inf))
    queries = np.concatenate([np.eye(3, 4), np.ones((3, 1))], axis=1).astype(np.float32)
    exclude = [np.arange(0, 30), np.arange(0), np.arange(4990, 5000)]
    widths: list[int] = []
    best_per_row = TopSelector._best_per_row

    def spy(self: TopSelector, rows: np.ndarray, *args: object) -> object:
        widths.append(int(np.bincount(rows).max()))
        return best_per_row(self, rows, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(TopSelector, "_best_per_row", spy)
    a, b = exact.select(queries, exclude, 20), sampled.select(queries, exclude, 20)
    assert rows_of(b) == rows_of(a)
    assert b.scores.tolist() == a.scores.tolist()
    # A full scan keeps its k best, not the whole catalog (that padded the batch to n_items).
    assert widths == [20 + 16]


@pytest.mark.parametrize("exact_max", [0, 10**9])
def test_a_selection_does_not_depend_on_the_batch(exact_max: int) -> None:
    items = random_arrays(n_items=6000, n_users=1, dim=16, seed=7).item_factors
    selector = TopSelector(items, exact_max=exact_max, sample_size=1024)
    rng = np.random.default_rng(2)
    queries = np.concatenate([rng.standard_normal((97, 16)), np.ones((97, 1))], axis=1)
    queries = queries.astype(np.float32)
    exclude = [np.sort(rng.choice(len(items), size=5, replace=False)) for _ in range(97)]
    whole = selector.select(queries, exclude, 30)
    for start, stop in ((0, 1), (5, 6), (10, 42), (42, 97)):
        part = selector.select(queries[start:stop], exclude[start:stop], 30)
        assert part.items.tolist() == whole.items[start:stop].tolist()
        assert part.scores.tolist() == whole.scores[start:stop].tolist()


def test_a_list_is_never_longer_than_what_is_left(clustered: ServingModel) -> None:
    seen = [entry(i) for i in clustered.item_ids[:95].tolist()]
    (ranked,) = recommend(clustered, [("u0", seen)], Policy(top_n=100))
    assert sorted(ranked.items) == sorted(clustered.item_ids[95:].tolist())


def test_the_clustered_fixture_is_what_the_tests_assume() -> None:
    arrays = clustered_arrays()
    assert len(arrays.item_ids) == 100
    assert arrays.item_factors.shape == (100, 9)


def test_seen_items_can_be_kept_for_repeat_purchases(clustered: ServingModel) -> None:
    (before,) = recommend(clustered, [("u0", [])], Policy(top_n=10))
    seen = [entry(before.items[0])]
    (kept,) = recommend(clustered, [("u0", seen)], Policy(top_n=10, blend=0, exclude_seen=False))
    assert kept.items == before.items
    (popular,) = recommend(clustered, [("stranger", [entry("nope")])], Policy(exclude_seen=False))
    assert popular.items[:3] == clustered.popular_items[:3]


def with_training_items(items_of_u0: list[str]) -> ServingModel:
    arrays = clustered_arrays()
    rows = sorted(arrays.item_ids.index(i) for i in items_of_u0)
    indptr = np.array([0, len(rows), len(rows), len(rows), len(rows)], dtype=np.int64)
    arrays = dataclasses.replace(
        arrays, user_items=UserItems(indptr, np.asarray(rows, dtype=np.int32))
    )
    return ServingModel(name="shop", version="v1", uri="file:///m", arrays=arrays)


def test_a_known_users_training_items_are_excluded_with_the_live_history(
    clustered: ServingModel,
) -> None:
    (before,) = recommend(clustered, [("u0", [])], Policy(top_n=10))
    model = with_training_items(before.items[:3])
    (after,) = recommend(model, [("u0", [entry(before.items[3])])], Policy(top_n=10, blend=0))
    assert not set(after.items) & set(before.items[:4])
    assert after.items[:6] == before.items[4:]
    (other,) = recommend(model, [("u1", [])], Policy(top_n=10))
    assert other.items == recommend(clustered, [("u1", [])], Policy(top_n=10))[0].items


def test_training_items_are_kept_when_the_policy_keeps_seen_items(
    clustered: ServingModel,
) -> None:
    (before,) = recommend(clustered, [("u0", [])], Policy(top_n=10))
    model = with_training_items(before.items[:3])
    (kept,) = recommend(model, [("u0", [])], Policy(top_n=10, exclude_seen=False))
    assert kept.items == before.items


def test_the_naive_baseline_adds_the_plain_mean_of_the_last_ten_items() -> None:
    arrays = random_arrays(n_items=30, n_users=2, dim=3, seed=4)
    model = ServingModel(name="shop", version="v1", uri="file:///m", arrays=arrays)
    history = [entry(f"i{n}", ts=T0 + n) for n in range(12)] + [entry("unknown", ts=T0 + 99)]
    query, source = naive_query(model, "u1", history, Policy())
    last_ten = arrays.item_factors[2:12, :-1].astype(np.float64).mean(axis=0)
    assert source is Source.BLEND
    assert query is not None
    np.testing.assert_allclose(query[:-1], arrays.user_factors[1, :-1] + last_ten, rtol=1e-6)
    assert query[-1] == 1.0
    cold, cold_source = naive_query(model, "stranger", history[:2], Policy())
    assert cold_source is Source.RECENT
    assert cold is not None
    np.testing.assert_allclose(cold[:-1], arrays.item_factors[:2, :-1].mean(axis=0), rtol=1e-6)
    assert naive_query(model, "stranger", [], Policy()) == (None, Source.POPULAR)


@pytest.mark.parametrize("exact_max", [10**9, 0])
def test_a_bonus_is_added_exactly_on_both_selection_paths(exact_max: int) -> None:
    items = random_arrays(n_items=5_000, n_users=1, dim=8, seed=5).item_factors
    selector = TopSelector(items, exact_max=exact_max, sample_size=1024, block_cells=20 * 1000)
    rng = np.random.default_rng(2)
    queries = np.concatenate([rng.standard_normal((20, 8)), np.ones((20, 1))], axis=1)
    queries = queries.astype(np.float32)
    exclude = [np.sort(rng.choice(len(items), size=5, replace=False)) for _ in range(20)]
    bonus = []
    for excluded in exclude:
        rows = np.setdiff1d(rng.choice(len(items), size=30, replace=False), excluded)
        bonus.append((rows.astype(np.intp), rng.uniform(0, 5, size=len(rows)).astype(np.float32)))
    got = selector.select(queries, exclude, 10, bonus)
    for i, (query, excluded, (rows, extra)) in enumerate(zip(queries, exclude, bonus, strict=True)):
        brute = items @ query
        brute[rows] += extra
        brute[excluded] = -np.inf
        assert got.items[i].tolist() == np.argsort(-brute, kind="stable")[:10].tolist()
        np.testing.assert_allclose(got.scores[i], np.sort(brute)[::-1][:10], rtol=1e-5)


def test_neighbours_of_the_last_items_lift_what_goes_with_them() -> None:
    arrays = clustered_arrays()
    n = len(arrays.item_ids)
    rows = np.full((n, 2), -1, dtype=np.int32)
    scores = np.zeros((n, 2), dtype=np.float32)
    rows[arrays.item_ids.index("i2-0")] = [arrays.item_ids.index("i3-7"), -1]
    scores[arrays.item_ids.index("i2-0")] = [1.0, 0.0]
    model = ServingModel(
        name="shop",
        version="v1",
        uri="file:///m",
        arrays=dataclasses.replace(arrays, neighbours=ItemNeighbours(rows, scores)),
    )
    history = [entry("i2-0")]
    (plain,) = recommend(model, [("u0", history)], Policy(top_n=5, neighbour_weight=0.0))
    assert "i3-7" not in plain.items
    (lifted,) = recommend(model, [("u0", history)], Policy(top_n=5, neighbour_weight=100.0))
    assert lifted.items[0] == "i3-7"
    assert lifted.items[1:] == plain.items[:4]
    # A neighbour the user already has stays out.
    (seen,) = recommend(
        model, [("u0", [entry("i3-7"), *history])], Policy(top_n=5, neighbour_weight=100.0)
    )
    assert "i3-7" not in seen.items
