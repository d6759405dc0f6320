from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from reco_common.interactions import LogFormat, read_interactions
from reco_common.synth import Shop, ShopConfig, generate, iter_actions, write_shop


def test_same_seed_same_shop_other_seed_other_shop() -> None:
    a = generate(ShopConfig(n_interactions=5_000, seed=7))
    assert a.log.equals(generate(ShopConfig(n_interactions=5_000, seed=7)).log)
    assert not a.log.equals(generate(ShopConfig(n_interactions=5_000, seed=8)).log)


def test_shape_time_order_and_ids() -> None:
    config = ShopConfig(n_interactions=20_000, n_users=500, n_items=300, days=10, seed=1)
    shop = generate(config)
    assert shop.log.num_rows == 20_000
    ts = shop.log.column("ts").to_numpy()
    assert np.all(np.diff(ts) >= 0)
    start = config.start.timestamp()
    assert ts[0] >= start
    assert ts[-1] <= start + 10 * 86_400
    assert set(shop.log.column("user_id").to_pylist()) <= {f"u{n}" for n in range(500)}
    assert shop.items.num_rows == 300
    assert len(set(shop.log.column("event_id").to_pylist())) == 20_000


def test_popularity_is_skewed_and_actions_follow_the_funnel() -> None:
    shop = generate(ShopConfig(n_interactions=50_000, seed=2))
    counts = np.array(sorted(Counter(shop.log.column("item_id").to_pylist()).values()))[::-1]
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.4
    actions = Counter(shop.log.column("action").to_pylist())
    assert actions["view"] > actions["click"] > actions["cart"] > actions["purchase"] > 0


def _categories(shop: Shop) -> dict[str, str]:
    items = shop.items.column("item_id").to_pylist()
    return dict(zip(items, shop.items.column("category").to_pylist(), strict=True))


def _category_share(shop_log_users: list[str], categories: list[str]) -> float:
    """The share of a user's events in their most frequent category, averaged over users."""
    per_user: dict[str, Counter[str]] = {}
    for user, category in zip(shop_log_users, categories, strict=True):
        per_user.setdefault(user, Counter())[category] += 1
    shares = [c.most_common(1)[0][1] / c.total() for c in per_user.values() if c.total() >= 20]
    return float(np.mean(shares))


def test_users_have_tastes() -> None:
    shop = generate(ShopConfig(n_interactions=50_000, n_categories=20, seed=3))
    category = _categories(shop)
    users = shop.log.column("user_id").to_pylist()
    cats = [category[i] for i in shop.log.column("item_id").to_pylist()]
    # Without tastes the top category of 20 would hold roughly 10-15 % of a user's events.
    assert _category_share(users, cats) > 0.4


def test_drift_moves_tastes_between_the_halves() -> None:
    def moved(drift: float) -> float:
        shop = generate(ShopConfig(n_interactions=60_000, n_users=600, drift=drift, seed=4))
        category = _categories(shop)
        half = shop.log.num_rows // 2
        tops = []
        for part in (shop.log.slice(0, half), shop.log.slice(half)):
            per_user: dict[str, Counter[str]] = {}
            for u, i in zip(
                part.column("user_id").to_pylist(), part.column("item_id").to_pylist(), strict=True
            ):
                per_user.setdefault(u, Counter())[category[i]] += 1
            tops.append({u: c.most_common(1)[0][0] for u, c in per_user.items() if c.total() >= 15})
        common = tops[0].keys() & tops[1].keys()
        return sum(tops[0][u] != tops[1][u] for u in common) / len(common)

    assert moved(0.8) > moved(0.0) + 0.2


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="n_interactions"):
        ShopConfig(n_interactions=10)
    with pytest.raises(ValueError, match="drift"):
        ShopConfig(drift=1.5)
    with pytest.raises(ValueError, match="timezone"):
        ShopConfig(start=datetime(2026, 1, 1))


@pytest.mark.parametrize("fmt", [LogFormat.CSV, LogFormat.JSONL, LogFormat.PARQUET])
def test_written_shop_reads_back(tmp_path: Path, fmt: LogFormat) -> None:
    shop = generate(ShopConfig(n_interactions=2_000, seed=5))
    uris = write_shop(shop, str(tmp_path), fmt=fmt)
    log = read_interactions(uris["interactions"])
    assert len(log) == 2_000
    assert log.table.column("event_id").to_pylist() == shop.log.column("event_id").to_pylist()
    assert log.timestamps() == pytest.approx(shop.log.column("ts").to_numpy())
    assert set(log.weights().tolist()) <= {1.0, 2.0, 4.0, 8.0}
    assert uris["items"].endswith(f"items.{fmt.value}")


def test_iter_actions_yields_valid_events_in_order() -> None:
    shop = generate(ShopConfig(n_interactions=1_000, seed=6))
    events = list(islice(iter_actions(shop, batch_rows=100), 250))
    assert [e.event_id for e in events] == shop.log.column("event_id").to_pylist()[:250]
    assert all(e.ts.tzinfo == UTC for e in events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
