"""Worker start: seconds from process start to a model ready to serve, per catalog size and cache.

    uv run python bench/worker/start.py [--items 100000 1000000] [--rounds 3]

Per catalog size, one random model (64 dimensions + bias, 100k users, CSR training items and
item neighbours like a trained artifact) in a ``file://`` store. Each measure starts a new
Python process that imports the worker and runs its model load (``load_serving_model``: the
manifest, checksums, the arrays mapped, the checks, the serving indexes) and prints when it is
done; the figures are the wall time from spawning the process to the worker's modules imported
(``reco_worker.worker`` and what it imports: numpy, aiokafka, FastAPI, …), and from there to the
model ready. The worker's other
start-up steps (the Kafka group join, the HTTP port) do not depend on the model and are left
out. Three caches:

- ``per-pod, empty``: a new pod's own ``emptyDir``: every file downloaded and hashed;
- ``per-pod, filled, no marker``: the files there but never marked verified (a cache of a
  build before the marker): every file hashed again;
- ``shared, verified``: a cache volume another worker already filled and marked (or this pod's
  own after a restart): the manifest read and hashed, the files' sizes checked, nothing else.

The page cache is warm for the shared case (a volume on the node that a worker used before);
the machine cannot drop it (no root over /proc/sys/vm in a container), so the empty case also
reads its source from the page cache: a download from object storage is slower than this.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from reco_common.artifact import (
    VERIFIED_MARKER,
    ItemNeighbours,
    ModelArrays,
    UserItems,
    write_artifact,
)
from reco_common.contracts import EvalMetrics
from reco_common.storage import open_store

DIM = 64
N_USERS = 100_000
NEIGHBOURS = 20
ITEMS_PER_USER = 20

CHILD = """
import sys, time
from pathlib import Path
from reco_common.settings import S3Settings
from reco_worker import worker
from reco_worker.model_store import load_serving_model
imported = time.time()
model = load_serving_model(sys.argv[1], s3=S3Settings(), cache_dir=Path(sys.argv[2]))
print(imported, time.time(), model.n_items, flush=True)
"""


def build_model(root: Path, n_items: int) -> str:
    rng = np.random.default_rng(0)
    indptr = np.arange(0, (N_USERS + 1) * ITEMS_PER_USER, ITEMS_PER_USER, dtype=np.int64)
    rows = np.sort(rng.integers(0, n_items, (N_USERS, ITEMS_PER_USER)), axis=1)
    arrays = ModelArrays(
        item_ids=[f"i{n}" for n in range(n_items)],
        user_ids=[f"u{n}" for n in range(N_USERS)],
        item_factors=0.1 * rng.standard_normal((n_items, DIM + 1), dtype=np.float32),
        user_factors=0.1 * rng.standard_normal((N_USERS, DIM + 1), dtype=np.float32),
        popular_items=[f"i{n}" for n in range(200)],
        popular_scores=[float(200 - n) for n in range(200)],
        user_items=UserItems(indptr=indptr, indices=rows.ravel().astype(np.int32)),
        neighbours=ItemNeighbours(
            rows=rng.integers(0, n_items, (n_items, NEIGHBOURS), dtype=np.int32),
            scores=rng.random((n_items, NEIGHBOURS), dtype=np.float32),
        ),
    )
    return write_artifact(
        open_store(root.as_uri()),
        model_name="bench",
        version=f"n{n_items}",
        arrays=arrays,
        created_at=datetime.now(UTC),
        data_snapshot="bench",
        params={"dim": DIM},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
    )


def start_to_ready(uri: str, cache: Path) -> tuple[float, float]:
    """Seconds from spawning the process to the worker's modules imported, and from there to
    the model ready (wall clock, across the two processes)."""
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, uri, str(cache)], check=True, capture_output=True, text=True
    ).stdout
    imported, ready, _ = out.split()
    return float(imported) - started, float(ready) - float(imported)


def prepare(case: str, cache: Path, *, filled: Path) -> None:
    """``cache`` as the case finds it: empty, filled without the marker, or filled and marked."""
    shutil.rmtree(cache, ignore_errors=True)
    if case == "per-pod, empty":
        return
    shutil.copytree(filled, cache)
    if case == "per-pod, filled, no marker":
        for marker in cache.rglob(VERIFIED_MARKER):
            marker.unlink()


CASES = ("per-pod, empty", "per-pod, filled, no marker", "shared, verified")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for n_items in args.items:
            uri = build_model(root / "store", n_items)
            filled = root / "filled"
            start_to_ready(uri, filled)  # fills and marks it, as the first worker would
            size = sum(f.stat().st_size for f in filled.rglob("*") if f.is_file()) / 2**20
            times: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
            for _ in range(args.rounds):
                for case in CASES:
                    prepare(case, root / "cache", filled=filled)
                    times[case].append(start_to_ready(uri, root / "cache"))
                    imports, load = times[case][-1]
                    print(f"{n_items} {case}: imports {imports:.2f} s, load {load:.2f} s")
            for case in CASES:
                imports = statistics.median(t[0] for t in times[case])
                loads = sorted(t[1] for t in times[case])
                spread = f"{loads[0]:.2f}-{loads[-1]:.2f}"
                rows.append(
                    (n_items, f"{size:.0f}", case, imports, statistics.median(loads), spread)
                )
            shutil.rmtree(filled)
    print(f"\nload average at the end {os.getloadavg()}\n")
    print("| items | artifact MiB | cache | imports s | model load s (range) | start → ready s |")
    print("|---:|---:|---|---:|---:|---:|")
    for n_items, size, case, imports, load, spread in rows:
        total = imports + load
        print(
            f"| {n_items:,} | {size} | {case} | {imports:.2f} | {load:.2f} ({spread}) | {total:.2f} |"
        )


if __name__ == "__main__":
    main()
