"""Approximate top-N libraries side by side on the worker's problem: build time, recall@100
against exact search, query latency, memory, and whether the saved index can be memory-mapped.

The catalog is the worker benchmark's random model (``bench/worker/throughput.py``: items
``[v, b]`` of 64 dimensions + bias, 0.1 x N(0, 1)), the queries are the real-time policy's
``[q, 1]``: a known user's trained vector blended 0.25 / 0.75 with the mean of a few recent
items rescaled to the median user norm. ``--decay``: the spectrum of a trained model instead of
isotropic factors; ``--augment``: the norm-equalising extra dimension (``reco_common.ann``). Inner product throughout (LightFM's ``q . v + b``).
Single-threaded queries (a worker scores with one BLAS thread), the index built with
``--build-threads``.

Not a dependency of the project: run it in a scratch environment that has the libraries
(hnswlib has no wheel for CPython 3.11 on PyPI and builds from its sdist):

    uv venv /tmp/annbench && VIRTUAL_ENV=/tmp/annbench uv pip install numpy usearch faiss-cpu hnswlib
    /tmp/annbench/bin/python bench/worker/ann_libraries.py --items 100000 --libraries usearch hnswlib faiss
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DIM = 64
K = 100
METRIC = {"usearch": "ip", "hnswlib": "ip", "faiss": "METRIC_INNER_PRODUCT"}
EXTRA = [0]


def factors(rng: np.random.Generator, n: int, decay: float) -> np.ndarray:
    """``n`` rows of 64 dimensions + bias, 0.1 x N(0, 1) overall (the worker benchmark's random
    model when ``decay`` is 0); with ``decay`` > 0 the variance of the i-th direction (randomly
    rotated) falls as i^-decay: 1.2 puts 80 % of it in the top 16 of 64 directions, as a trained
    LightFM model of MovieLens has 82 % in the top 16 of 96."""
    raw = rng.standard_normal((n, DIM + 1), dtype=np.float32)
    if decay > 0:
        scale = np.arange(1, DIM + 1, dtype=np.float64) ** (-decay / 2)
        scale *= np.sqrt(DIM / np.sum(scale**2))
        rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((DIM, DIM)))
        raw[:, :-1] = (raw[:, :-1] * scale.astype(np.float32)) @ rotation.astype(np.float32)
    return 0.1 * raw


def catalog(n_items: int, seed: int, decay: float) -> np.ndarray:
    return factors(np.random.default_rng(seed), n_items, decay)


def queries(items: np.ndarray, n: int, seed: int, decay: float) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    users = factors(rng, n, decay)[:, :-1].astype(np.float64)
    norm = float(np.median(np.linalg.norm(users, axis=1)))
    recent = np.stack(
        [items[rng.integers(0, len(items), rng.integers(1, 6)), :-1].mean(axis=0) for _ in range(n)]
    )
    recent *= norm / np.linalg.norm(recent, axis=1, keepdims=True)
    q = 0.25 * users + 0.75 * recent
    return np.concatenate([q, np.ones((n, 1))], axis=1).astype(np.float32)


def augmented(items: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inner-product search as a nearest-neighbour one: every item gets one more
    dimension, sqrt(M^2 - |x|^2) for the largest norm M, so that all have norm M; a query gets
    0 there. Then the cosine (or L2) order of the items is their inner-product order."""
    norms = np.linalg.norm(items, axis=1)
    extra = np.sqrt(np.maximum(norms.max() ** 2 - norms**2, 0))
    items_t = np.concatenate([items, extra[:, None]], axis=1).astype(np.float32)
    return items_t, np.concatenate([q, np.zeros((len(q), 1))], axis=1).astype(np.float32)


def exact(items: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    out = []
    for start in range(0, len(q), 64):
        scores = q[start : start + 64] @ items.T
        out.append(np.argpartition(scores, -k, axis=1)[:, -k:])
    return np.concatenate(out)


def reranked(found: np.ndarray, items: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best of each query's fetched candidates by their exact inner product."""
    rows = np.where(found >= 0, found, 0)
    scores = np.einsum("bkd,bd->bk", items[rows], q)
    scores[found < 0] = -np.inf
    best = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(found, best, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# Each library: build(items, params) -> saved file; load(path, mmap) -> search(q, k, ef) -> rows


def usearch_build(
    items: np.ndarray, path: Path, m: int, ef_add: int, threads: int, dtype: str = "f32"
) -> None:
    from usearch.index import Index

    index = Index(
        ndim=items.shape[1],
        metric=METRIC["usearch"],
        dtype=dtype,
        connectivity=m,
        expansion_add=ef_add,
    )
    index.add(np.arange(len(items), dtype=np.uint64), items, threads=threads)
    index.save(str(path))


def usearch_load(path: Path, mmap: bool) -> Callable[[np.ndarray, int, int], np.ndarray]:
    from usearch.index import Index

    index = Index.restore(str(path), view=mmap)
    assert index is not None

    def search(q: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.expansion_search = ef
        found = index.search(q, k, threads=1)
        return np.asarray(found.keys, dtype=np.int64)

    return search


def hnswlib_build(items: np.ndarray, path: Path, m: int, ef_add: int, threads: int) -> None:
    import hnswlib

    index = hnswlib.Index(space=METRIC["hnswlib"], dim=items.shape[1])
    index.init_index(max_elements=len(items), M=m, ef_construction=ef_add, random_seed=0)
    index.add_items(items, np.arange(len(items)), num_threads=threads)
    index.save_index(str(path))


def hnswlib_load(path: Path, mmap: bool) -> Callable[[np.ndarray, int, int], np.ndarray]:
    import hnswlib

    if mmap:
        raise NotImplementedError("hnswlib reads the whole index into memory")
    index = hnswlib.Index(space=METRIC["hnswlib"], dim=DIM + 1 + EXTRA[0])
    index.load_index(str(path))
    index.set_num_threads(1)

    def search(q: np.ndarray, k: int, ef: int) -> np.ndarray:
        index.set_ef(max(ef, k))
        labels, _ = index.knn_query(q, k=k, num_threads=1)
        return np.asarray(labels, dtype=np.int64)

    return search


def faiss_build(items: np.ndarray, path: Path, m: int, ef_add: int, threads: int) -> None:
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexHNSWFlat(items.shape[1], m, getattr(faiss, METRIC["faiss"]))
    index.hnsw.efConstruction = ef_add
    index.add(items)
    faiss.write_index(index, str(path))


def faiss_load(path: Path, mmap: bool) -> Callable[[np.ndarray, int, int], np.ndarray]:
    import faiss

    faiss.omp_set_num_threads(1)
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    index = faiss.read_index(str(path), flags)

    def search(q: np.ndarray, k: int, ef: int) -> np.ndarray:
        params = faiss.SearchParametersHNSW(efSearch=max(ef, k))
        _, labels = index.search(q, k, params=params)
        return np.asarray(labels, dtype=np.int64)

    return search


def usearch_i8_build(items: np.ndarray, path: Path, m: int, ef_add: int, threads: int) -> None:
    """usearch with int8 vectors, as reco_common.ann stores augmented rows."""
    usearch_build(items, path, m, ef_add, threads, dtype="i8")


LIBRARIES: dict[str, tuple[Callable[..., None], Callable[..., Any]]] = {
    "usearch": (usearch_build, usearch_load),
    "usearch-i8": (usearch_i8_build, usearch_load),
    "hnswlib": (hnswlib_build, hnswlib_load),
    "faiss": (faiss_build, faiss_load),
}


def measure(name: str, args: argparse.Namespace, items: np.ndarray, q: np.ndarray) -> None:
    build, load = LIBRARIES[name]
    truth = exact(items, q, K)
    if args.augment:
        items, q = augmented(items, q)
    with tempfile.TemporaryDirectory(prefix="ann-") as tmp:
        path = Path(tmp) / f"{name}.index"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        build(items, path, args.m, args.ef_add, args.build_threads)
        built = {"build_s": time.perf_counter() - wall0, "build_cpu_s": time.process_time() - cpu0}
        size = path.stat().st_size / 2**20
        for mmap in (True, False):
            rss0 = rss_mib()
            wall0 = time.perf_counter()
            try:
                search = load(path, mmap)
            except (NotImplementedError, RuntimeError, ValueError) as exc:
                print(json.dumps({"library": name, "mmap": mmap, "error": str(exc)}), flush=True)
                continue
            load_s = time.perf_counter() - wall0
            loaded_mib = rss_mib() - rss0
            for ef in args.ef:
                fetch = max(K, int(ef * args.fetch))
                search(q[:20], fetch, ef)
                cpu0 = time.process_time()
                found = reranked(search(q, fetch, ef), items, q, K)
                per_query_ms = (time.process_time() - cpu0) / len(q) * 1000
                row = {
                    "library": name,
                    "items": len(items),
                    "m": args.m,
                    "ef_add": args.ef_add,
                    "decay": args.decay,
                    "augment": args.augment,
                    **{k: round(v, 2) for k, v in built.items()},
                    "file_mib": round(size, 1),
                    "mmap": mmap,
                    "load_s": round(load_s, 3),
                    "rss_after_load_mib": round(loaded_mib, 1),
                    "rss_after_queries_mib": round(rss_mib() - rss0, 1),
                    "ef": ef,
                    "fetch": fetch,
                    "recall_at_100": round(recall(found, truth), 4),
                    "cpu_ms_per_query": round(per_query_ms, 3),
                    "load_avg": os.getloadavg()[0],
                }
                print(json.dumps(row), flush=True)
            del search


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--m", type=int, default=16, help="graph degree (connectivity, M)")
    parser.add_argument("--ef-add", type=int, default=128, help="expansion at build time")
    parser.add_argument("--ef", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument(
        "--augment", action="store_true", help="one more dimension, then cosine / L2 search"
    )
    parser.add_argument(
        "--fetch", type=float, default=0.0, help="candidates fetched, x ef (at least 100)"
    )
    parser.add_argument("--decay", type=float, default=0.0, help="spectrum decay (0: flat)")
    args = parser.parse_args()
    if args.augment:
        METRIC.update(usearch="cos", hnswlib="cosine", faiss="METRIC_L2")
        EXTRA[0] = 1
    items = catalog(args.items, seed=args.items, decay=args.decay)
    q = queries(items, args.queries, seed=args.items, decay=args.decay)
    print(f"max RSS before: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for name in args.libraries:
        measure(name, args, items, q)


if __name__ == "__main__":
    main()
