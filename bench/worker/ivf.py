"""Two-stage IVF top-N (coarse clusters, then an exact re-score) against the worker's exact
scan, in process: recall@100 and CPU milliseconds per user, side by side in one run.

The IVF (inverted file): k-means centroids of the item rows; every item in the list of its
nearest centroid, the rows sorted by list so that a list is a contiguous slice of the factor
matrix. Per batch of queries: one product queries x centroids, each query's ``--nprobe`` best
lists, then one small product per list over the batch's queries that probe it (BLAS, no Python
loop per query), the excluded items masked, the ``n + 16`` best candidates cut per query
(``reco_worker.topn.top_columns``) and re-scored one dot product each, as the worker does.
Variants (``--probe``):

- ``worker`` (the default): the worker's own path, ``reco_common.ivf.IvfIndex`` as the trainer
  builds it (``aug`` below, ``--nlist`` lists) searched by ``reco_worker.topn.TopSelector``;

- ``ip``: k-means on the rows ``[v, b]``, lists probed by ``q . c`` (faiss' IVF inner product);
- ``aug``: k-means on the norm-equalised rows ``[v, b, sqrt(M^2 - |x|^2)]`` (``reco_common.ann``
  augmented), lists probed by the augmented L2 distance ``|c|^2 - 2 q . c``;
- ``sph``: spherical k-means on the augmented rows, probed by ``q . c / |c|``;
- ``faiss``: faiss-cpu's ``IndexIVFFlat`` (inner product, 1 OpenMP thread), the same centroids
  as ``ip``, ``n + 16`` plus the query's exclusions fetched, the excluded dropped, re-scored.

Catalogs (``--catalog``): ``decay`` (``ann_libraries.factors`` with ``--decay``: 80 % of the
variance in 16 of 64 directions at 1.2), ``clustered`` (items around ``--categories`` category
centres drawn from the same spectrum, ``--spread`` of each row's variance its own, users around
the centres too: trained factors group by genre), ``iso`` (the flat random model). Queries are
the real-time policy's ``[q, 1]`` as in ``ann_libraries.queries`` (0.25 x user + 0.75 x the mean
of 1-5 recent items scaled to a user's norm; every other query a cold start, recent items only),
their recent items excluded. One BLAS thread, as the worker runs (``RECO_WORKER_BLAS_THREADS``).

    uv run python bench/worker/ivf.py --items 100000 --catalog decay --nprobe 8 16 32 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ann_libraries import factors
from threadpoolctl import threadpool_limits

from reco_common.ivf import IvfIndex
from reco_worker.topn import MARGIN, IndexUse, Pairs, TopSelector, best_per_row, top_columns

K = 100
SAMPLE = 16_384
Searcher = Callable[[np.ndarray, Pairs, int], np.ndarray]


def catalog(args: argparse.Namespace, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Item rows ``[v, b]`` and user rows (float32)."""
    rng = np.random.default_rng(n_items)
    if args.catalog == "iso":
        return factors(rng, n_items, 0.0), factors(rng, 2 * args.queries, 0.0)
    if args.catalog == "decay":
        return factors(rng, n_items, args.decay), factors(rng, 2 * args.queries, args.decay)
    centres = factors(rng, args.categories, args.decay)
    # Category sizes vary (Zipf-like weights), as a shop's do.
    weights = 1.0 / np.arange(1, args.categories + 1) ** 0.7
    weights /= weights.sum()

    def around(n: int) -> np.ndarray:
        cat = rng.choice(args.categories, size=n, p=weights)
        own = factors(rng, n, args.decay)
        rows = np.sqrt(1 - args.spread) * centres[cat] + np.sqrt(args.spread) * own
        return rows.astype(np.float32)

    return around(n_items), around(2 * args.queries)


def queries(items: np.ndarray, users: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, Pairs]:
    """The policy's ``[q, 1]`` (half blended, half cold) and the recent items excluded."""
    rng = np.random.default_rng(seed + 1)
    norm = float(np.median(np.linalg.norm(users[:, :-1], axis=1)))
    recent_rows = [np.unique(rng.integers(0, len(items), rng.integers(1, 6))) for _ in range(n)]
    recent = np.stack([items[r, :-1].astype(np.float64).mean(axis=0) for r in recent_rows])
    recent *= norm / np.linalg.norm(recent, axis=1, keepdims=True)
    q = recent.copy()
    known = np.arange(n) % 2 == 0
    q[known] = 0.25 * users[:n][known, :-1] + 0.75 * recent[known]
    q = np.concatenate([q, np.ones((n, 1))], axis=1).astype(np.float32)
    return q, Pairs.of(recent_rows)


def kmeans(x: np.ndarray, nlist: int, iters: int, *, spherical: bool, seed: int = 0) -> np.ndarray:
    """Lloyd's k-means (or spherical: unit centroids, assigned by cosine) on ``x``, in chunks."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(len(x), nlist, replace=False)].copy()
    for _ in range(iters):
        if spherical:
            c /= np.linalg.norm(c, axis=1, keepdims=True)
        assign = nearest(x, c, spherical=spherical)
        sums = np.zeros_like(c, dtype=np.float64)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=nlist)
        empty = counts == 0
        c = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        c[empty] = x[rng.choice(len(x), int(empty.sum()), replace=False)]
    if spherical:
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c


def nearest(x: np.ndarray, c: np.ndarray, *, spherical: bool) -> np.ndarray:
    half_norms = np.zeros(len(c), dtype=np.float32) if spherical else 0.5 * (c * c).sum(axis=1)
    out = np.empty(len(x), dtype=np.intp)
    for start in range(0, len(x), 65_536):
        out[start : start + 65_536] = np.argmax(x[start : start + 65_536] @ c.T - half_norms, 1)
    return out


def augmented(items: np.ndarray) -> np.ndarray:
    norms2 = (items.astype(np.float64) ** 2).sum(axis=1)
    extra = np.sqrt(np.maximum(norms2.max() - norms2, 0.0)).astype(np.float32)
    return np.concatenate([items, extra[:, None]], axis=1)


@dataclass
class Ivf:
    """Lists as contiguous slices ``[offsets[l], offsets[l + 1])`` of the sorted rows; a
    query's list scores are ``q @ probe_w.T + probe_b``."""

    items: np.ndarray
    offsets: np.ndarray
    probe_w: np.ndarray
    probe_b: np.ndarray
    sample: np.ndarray
    fallbacks: int = 0

    @property
    def nlist(self) -> int:
        return len(self.offsets) - 1

    @staticmethod
    def build(items: np.ndarray, args: argparse.Namespace, variant: str) -> tuple[Ivf, np.ndarray]:
        """The index over ``items`` reordered, and the order (new row -> old row)."""
        x = items if variant == "ip" else augmented(items)
        rng = np.random.default_rng(1)
        train = x[rng.choice(len(x), min(len(x), args.train), replace=False)]
        spherical = variant == "sph"
        c = kmeans(train, args.nlist, args.iters, spherical=spherical)
        assign = nearest(x, c, spherical=spherical)
        order = np.argsort(assign, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(assign, minlength=args.nlist))])
        d = items.shape[1]
        if variant == "ip":
            w, b = c, np.zeros(len(c), dtype=np.float32)
        elif variant == "aug":
            w, b = c[:, :d], -0.5 * (c * c).sum(axis=1)
        else:
            w, b = c[:, :d], np.zeros(len(c), dtype=np.float32)
        sorted_items = np.ascontiguousarray(items[order])
        sample = sorted_items[np.sort(rng.choice(len(items), min(SAMPLE, len(items) // 8), False))]
        ivf = Ivf(sorted_items, offsets, np.ascontiguousarray(w), b, sample)
        return ivf, order

    def candidates(self, q: np.ndarray, exclude: Pairs, k: int, nprobe: int) -> np.ndarray:
        """Per query the ``k`` best rows of its probed lists, excluded rows left out
        (``len(items)`` pads a short row).

        As the worker's exact scan: a per-query threshold from a fixed sample of the catalog
        lets about ``k`` + 4 sigma items of the whole catalog through; only those of the probed
        lists are kept. A query left with fewer than ``k`` (its best items lie in lists it did
        not probe) is scored over the whole catalog instead (counted in ``fallbacks``)."""
        n = len(self.items)
        probe = top_columns(q @ self.probe_w.T + self.probe_b, nprobe)
        thresholds = self._thresholds(q, k + int(exclude.counts(len(q)).max(initial=0)))
        lists = probe.ravel()
        by_list = np.argsort(lists, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(lists, minlength=self.nlist))])
        qrow = by_list // nprobe
        rows, cols, vals = [], [], []
        for lst in np.flatnonzero(np.diff(bounds)).tolist():
            who = qrow[bounds[lst] : bounds[lst + 1]]
            o0, o1 = int(self.offsets[lst]), int(self.offsets[lst + 1])
            scores = q[who] @ self.items[o0:o1].T
            hits = np.flatnonzero(scores >= thresholds[who, None])
            rows.append(who[hits // (o1 - o0)])
            cols.append(hits % (o1 - o0) + o0)
            vals.append(scores.ravel()[hits])
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        keep = ~np.isin(r.astype(np.int64) * n + c, exclude.keys(n))
        r, c, v = r[keep], c[keep], v[keep]
        out = best_per_row(r, c, v, len(q), k, sentinel=n)
        short = np.flatnonzero((out < n).sum(axis=1) < k)
        self.fallbacks += len(short)
        for row in short.tolist():
            scores = self.items @ q[row]
            scores[exclude.of_query(row)] = -np.inf
            out[row] = np.argpartition(scores, n - k)[n - k :]
        return out

    def _thresholds(self, q: np.ndarray, wanted: int) -> np.ndarray:
        sample = q @ self.sample.T
        size = sample.shape[1]
        mean = wanted * size / len(self.items)
        j = min(size, math.ceil(mean + 4 * math.sqrt(mean) + 2))
        return np.partition(sample, size - j, axis=1)[:, size - j]


def rescore(items: np.ndarray, cols: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The worker's re-score: each candidate's own dot product, best ``k`` by (score, row)."""
    n = len(items)
    cols = np.sort(cols, axis=1)
    pad = cols == n
    pad[:, 1:] |= cols[:, 1:] == cols[:, :-1]
    scores = np.einsum("bkd,bd->bk", items[np.minimum(cols, n - 1)], q)
    scores[pad] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cols, order, axis=1)


def timed(search: Searcher, q: np.ndarray, ex: Pairs, batch: int) -> tuple[np.ndarray, float]:
    out = []
    cpu0 = time.process_time()
    for start in range(0, len(q), batch):
        out.append(search(q[start : start + batch], ex.window(start, start + batch), K))
    return np.concatenate(out), (time.process_time() - cpu0) / len(q) * 1000


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True))
    return hits / truth.size


def faiss_searcher(items: np.ndarray, args: argparse.Namespace, nprobe: int) -> Searcher:
    import faiss

    faiss.omp_set_num_threads(1)
    quantizer = faiss.IndexFlatIP(items.shape[1])
    index = faiss.IndexIVFFlat(quantizer, items.shape[1], args.nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(1)
    index.train(items[rng.choice(len(items), min(len(items), args.train), replace=False)])
    index.add(items)
    index.nprobe = nprobe

    def search(q: np.ndarray, ex: Pairs, k: int) -> np.ndarray:
        fetch = k + MARGIN + int(ex.counts(len(q)).max(initial=0))
        _, found = index.search(q, fetch)
        found = np.where(found >= 0, found, len(items))
        keys = np.arange(len(q))[:, None] * len(items) + found
        found[np.isin(keys, ex.keys(len(items)))] = len(items)
        return rescore(items, found, q, k)

    return search


def worker_ivf(
    items: np.ndarray, args: argparse.Namespace, q: np.ndarray, ex: Pairs, truth: np.ndarray
) -> None:
    """The worker's own path: the trainer's ``IvfIndex.build``, ``TopSelector`` searching it."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    index = IvfIndex.build(items, lists=args.nlist)
    built, built_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(json.dumps({"build_cpu_s": round(built, 1), "build_wall_s": round(built_wall, 1)}))
    cpu0 = time.process_time()
    index.check(items)
    print(json.dumps({"check_cpu_s": round(time.process_time() - cpu0, 2)}))
    for nprobe in args.nprobe:
        use = IndexUse(min_items=0, probes=nprobe)
        selector = TopSelector(items, ivf=index, index_use=use)
        found, ms = timed(lambda a, e, k, s=selector: s.select(a, e, k).items, q, ex, args.batch)
        report(len(items), args, "worker", nprobe, built, recall(found, truth), ms)
        print(json.dumps({"fallbacks": selector.exact_fallbacks}))


def run(args: argparse.Namespace, n_items: int) -> None:
    items, users = catalog(args, n_items)
    q, ex = queries(items, users, args.queries, seed=n_items)
    load = os.getloadavg()[0]
    with threadpool_limits(limits=1):
        exact = TopSelector(items)
        truth, exact_ms = timed(lambda a, e, k: exact.select(a, e, k).items, q, ex, args.batch)
        print(json.dumps({"items": n_items, "catalog": args.catalog, "exact_cpu_ms": exact_ms}))
        for variant in args.probe:
            if variant == "worker":
                worker_ivf(items, args, q, ex, truth)
                continue
            if variant == "faiss":
                for nprobe in args.nprobe:
                    cpu0 = time.process_time()
                    search = faiss_searcher(items, args, nprobe)
                    built = time.process_time() - cpu0
                    found, ms = timed(search, q, ex, args.batch)
                    report(n_items, args, variant, nprobe, built, recall(found, truth), ms)
                continue
            cpu0 = time.process_time()
            ivf, order = Ivf.build(items, args, variant)
            built = time.process_time() - cpu0
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            ex_new = Pairs(ex.queries, inverse[ex.rows])
            for nprobe in args.nprobe:

                def search(
                    a: np.ndarray, e: Pairs, k: int, nprobe: int = nprobe, ivf: Ivf = ivf
                ) -> np.ndarray:
                    cols = ivf.candidates(a, e, k + MARGIN, nprobe)
                    return rescore(ivf.items, cols, a, k)

                found, ms = timed(search, q, ex_new, args.batch)
                found = np.where(found < n_items, order[np.minimum(found, n_items - 1)], -1)
                report(n_items, args, variant, nprobe, built, recall(found, truth), ms)
                print(json.dumps({"fallbacks": ivf.fallbacks}))
                ivf.fallbacks = 0
        # The exact scan again, after: load drifts on a shared machine.
        _, again = timed(lambda a, e, k: exact.select(a, e, k).items, q, ex, args.batch)
        print(json.dumps({"items": n_items, "exact_cpu_ms_again": again, "load": load}))


def report(
    n: int, args: argparse.Namespace, variant: str, nprobe: int, built: float, rec: float, ms: float
) -> None:
    print(
        json.dumps(
            {
                "items": n,
                "catalog": args.catalog,
                "variant": variant,
                "nlist": args.nlist,
                "nprobe": nprobe,
                "build_cpu_s": round(built, 1),
                "recall_at_100": round(rec, 4),
                "cpu_ms_per_user": round(ms, 3),
                "load": os.getloadavg()[0],
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, nargs="+", default=[100_000])
    parser.add_argument("--catalog", choices=["decay", "clustered", "iso"], default="decay")
    parser.add_argument("--decay", type=float, default=1.2)
    parser.add_argument("--categories", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=0.3, help="own share of a row's variance")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument(
        "--probe", nargs="+", default=["worker"], choices=["worker", "ip", "aug", "sph", "faiss"]
    )
    parser.add_argument("--train", type=int, default=131_072, help="k-means training rows")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    for n in args.items:
        run(args, n)


if __name__ == "__main__":
    main()
