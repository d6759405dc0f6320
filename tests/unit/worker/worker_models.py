"""Small models with known structure, built in memory (no trainer needed)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from reco_common.artifact import ModelArrays, write_artifact
from reco_common.contracts import EvalMetrics
from reco_common.storage import open_store

CLUSTERS = 4
PER_CLUSTER = 25
DIM = 8


def clustered_arrays(*, seed: int = 0) -> ModelArrays:
    """100 items in 4 clusters (``i<cluster>-<n>``); user ``u<c>`` likes cluster ``c``."""
    rng = np.random.default_rng(seed)
    centroids = np.eye(CLUSTERS, DIM) * 2.0
    items = np.concatenate(
        [centroids[c] + 0.1 * rng.standard_normal((PER_CLUSTER, DIM)) for c in range(CLUSTERS)]
    )
    bias = 0.01 * rng.standard_normal((len(items), 1))
    users = np.concatenate([centroids, np.zeros((CLUSTERS, 1))], axis=1)
    item_ids = [f"i{c}-{n}" for c in range(CLUSTERS) for n in range(PER_CLUSTER)]
    popular = [f"i{c}-{n}" for n in range(PER_CLUSTER) for c in range(CLUSTERS)]
    return ModelArrays(
        item_ids=item_ids,
        user_ids=[f"u{c}" for c in range(CLUSTERS)],
        item_factors=np.concatenate([items, bias], axis=1).astype(np.float32),
        user_factors=users.astype(np.float32),
        popular_items=popular,
        popular_scores=[float(len(popular) - r) for r in range(len(popular))],
    )


def random_rows(n: int, width: int, seed: int = 3) -> np.ndarray:
    """``n`` float32 rows of ``width``, 0.1 x N(0, 1): the index tests' catalogs."""
    return (0.1 * np.random.default_rng(seed).standard_normal((n, width))).astype(np.float32)


def random_queries(n: int, dim: int, seed: int = 4) -> np.ndarray:
    """``n`` queries ``[q, 1]`` of ``dim`` + 1, the query part 0.1 x N(0, 1)."""
    q = random_rows(n, dim + 1, seed)
    q[:, -1] = 1.0
    return q


def random_exclusions(n: int, n_items: int, seed: int = 6) -> list[np.ndarray]:
    """``n`` sorted, unique sets of 0 to 299 excluded rows of ``n_items``."""
    rng = np.random.default_rng(seed)
    return [np.unique(rng.integers(0, n_items, int(rng.integers(0, 300)))) for _ in range(n)]


def random_arrays(*, n_items: int, n_users: int, dim: int, seed: int = 0) -> ModelArrays:
    rng = np.random.default_rng(seed)
    return ModelArrays(
        item_ids=[f"i{n}" for n in range(n_items)],
        user_ids=[f"u{n}" for n in range(n_users)],
        item_factors=rng.standard_normal((n_items, dim + 1), dtype=np.float32),
        user_factors=rng.standard_normal((n_users, dim + 1), dtype=np.float32),
        popular_items=[f"i{n}" for n in range(min(n_items, 50))],
        popular_scores=[float(50 - n) for n in range(min(n_items, 50))],
    )


def publish(root: Path, arrays: ModelArrays, *, version: str = "v1") -> str:
    """Write ``arrays`` as model ``shop`` ``version`` under ``root`` (a file:// store)."""
    return write_artifact(
        open_store(root.as_uri()),
        model_name="shop",
        version=version,
        arrays=arrays,
        created_at=datetime.now(UTC),
        data_snapshot="test",
        params={},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
    )
