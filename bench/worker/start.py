"""Worker start: seconds from process start to a model ready to serve, per catalog size and cache.

    uv run python bench/worker/start.py [--items 100000 1000000] [--rounds 3]
        [--compare OTHER_CHECKOUT/.venv/bin/python] [--ready]

Per catalog size, one random model (64 dimensions + bias, 100k users, CSR training items and
item neighbours like a trained artifact) in a ``file://`` store. Each measure starts a new
Python process that imports what ``reco-worker`` imports (``reco_worker.__main__``: numpy,
aiokafka, FastAPI, the worker's modules, …) and runs its model load (``load_serving_model``:
the manifest, checksums, the arrays mapped, the checks, the serving indexes) and prints when it
is done; the figures are the wall time from spawning the process to the imports done, and from
there to the model ready. Three caches:

- ``per-pod, empty``: a new pod's own ``emptyDir``: every file downloaded and hashed;
- ``per-pod, filled, no marker``: the files there but never marked verified (a cache of a
  build before the marker): every file hashed again;
- ``shared, verified``: a cache volume another worker already filled and marked (or this pod's
  own after a restart): the manifest read and hashed, the files' sizes checked, nothing else.

``--compare PYTHON``: the same measures, alternated measure by measure, with the interpreter of
another checkout (its own ``uv sync``-ed ``.venv``, e.g. a ``git worktree`` of the commit
before a change): each side writes its own artifact with its own code and fills its own cache.

Bytecode: the service image compiles it at build (``UV_COMPILE_BYTECODE=1``, services/Dockerfile),
while a checkout here has none and ``PYTHONDONTWRITEBYTECODE=1`` in its environment: every
process compiles every module it imports again (the 20-54 s of imports of session 4 at load
11-14 were mostly that). By default each side's processes share a bytecode cache
(``PYTHONPYCACHEPREFIX``, filled by the first process) as in the image; ``--no-bytecode``
measures the checkout as it is.

``--ready``: also the whole ``reco-worker`` process on the dev stack (Kafka, Redis;
``RECO_*`` settings as for the other worker benchmarks), from spawning it to ``/readyz``
answering 200 (model loaded, consumer group joined, Redis answering), with the shared verified
cache; each start has its own topic and key prefix, stopped with SIGTERM after.

The page cache is warm for the shared case (a volume on the node that a worker used before);
the machine cannot drop it (no root over /proc/sys/vm in a container), so the empty case also
reads its source from the page cache: a download from object storage is slower than this.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from reco_common.artifact import ItemNeighbours, ModelArrays, UserItems, write_artifact
from reco_common.contracts import EvalMetrics
from reco_common.storage import open_store

DIM = 64
N_USERS = 100_000
NEIGHBOURS = 20
ITEMS_PER_USER = 20
READY_TIMEOUT_S = 300.0

CHILD = """
import sys, time
from pathlib import Path
import reco_worker.__main__
from reco_common.settings import S3Settings
from reco_worker.model_store import load_serving_model
def rss():
    fields = dict(line.split(":") for line in open("/proc/self/status"))
    return [int(fields[name].split()[0]) for name in ("RssFile", "RssAnon")]
imported, before = time.time(), rss()
model = load_serving_model(sys.argv[1], s3=S3Settings(), cache_dir=Path(sys.argv[2]))
after = rss()
print(imported, time.time(), after[0] - before[0], after[1] - before[1], flush=True)
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


@dataclass
class Side:
    """One checkout's interpreter, its artifact and its filled cache."""

    label: str
    python: str
    root: Path
    bytecode: bool = True
    uri: str = ""
    times: dict[str, list[tuple[float, float, float, float]]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The environment's bytecode settings for this side's processes (see the docstring)."""
        if not self.bytecode:
            return {"PYTHONDONTWRITEBYTECODE": "1"}
        return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(self.root / "pyc")}

    def write(self, n_items: int) -> None:
        """The artifact written by this side's own code (``--write`` in its interpreter)."""
        command = [self.python, __file__, "--write", str(self.root / "store"), str(n_items)]
        self.uri = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        self.uri = self.uri.strip()

    def start_to_ready(self, cache: Path) -> tuple[float, float, float, float]:
        """Seconds from spawning the process to the worker's modules imported, and from there
        to the model ready (wall clock, across the two processes); the MiB by which the load
        grew the process's resident file pages (read from the cache: what a cold node's
        volume would serve) and its own memory (allocated and filled)."""
        started = time.time()
        out = subprocess.run(
            [self.python, "-c", CHILD, self.uri, str(cache)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
        ).stdout
        imported, ready, file_kib, anon_kib = out.split()
        load = float(ready) - float(imported)
        return float(imported) - started, load, int(file_kib) / 1024, int(anon_kib) / 1024


def prepare(case: str, cache: Path, *, filled: Path) -> None:
    """``cache`` as the case finds it: empty, filled without the marker, or filled and marked."""
    shutil.rmtree(cache, ignore_errors=True)
    if case == "per-pod, empty":
        return
    shutil.copytree(filled, cache)
    if case == "per-pod, filled, no marker":
        for marker in cache.rglob(".verified*"):  # the marker of either side's code
            marker.unlink()


CASES = ("per-pod, empty", "per-pod, filled, no marker", "shared, verified")


async def process_to_ready(side: Side, cache: Path, log: Path) -> float:
    """Seconds from spawning ``reco-worker`` to ``/readyz`` answering 200 (dev stack)."""
    import httpx
    from throughput import free_port, start_worker

    port, prefix = free_port(), f"bench-start-{uuid.uuid4().hex[:8]}-"
    started = time.monotonic()
    process = await start_worker(
        side.uri,
        prefix,
        port=port,
        cache_dir=cache,
        log=log,
        env=side.env,
        command=Path(side.python).with_name("reco-worker"),
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
            while time.monotonic() - started < READY_TIMEOUT_S:
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                if process.returncode is not None:
                    raise RuntimeError(f"reco-worker exited {process.returncode}: see {log}")
                await asyncio.sleep(0.02)
        raise TimeoutError(f"not ready after {READY_TIMEOUT_S} s: see {log}")
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=60)


def measure(sides: list[Side], n_items: int, rounds: int, ready: bool, tmp: Path) -> list[str]:
    for side in sides:
        side.write(n_items)
        side.start_to_ready(side.root / "filled")  # fills and marks it, as the first worker would
        side.times = {case: [] for case in (*CASES, "ready")}
        if ready:  # not measured: compiles what only the running service imports
            prepare("shared, verified", tmp / "cache", filled=side.root / "filled")
            asyncio.run(process_to_ready(side, tmp / "cache", tmp / "warm-up.log"))
    size = sum(f.stat().st_size for f in (sides[-1].root / "filled").rglob("*") if f.is_file())
    for round_ in range(rounds):
        for case in CASES:
            for side in sides if round_ % 2 == 0 else sides[::-1]:
                prepare(case, tmp / "cache", filled=side.root / "filled")
                side.times[case].append(side.start_to_ready(tmp / "cache"))
                imports, load, file_mib, anon_mib = side.times[case][-1]
                print(
                    f"{n_items} {side.label} {case}: imports {imports:.2f} s, load {load:.2f} s, "
                    f"RSS + {file_mib:.0f} MiB of files, + {anon_mib:.0f} MiB of memory"
                )
        for side in (sides if round_ % 2 == 0 else sides[::-1]) if ready else ():
            prepare("shared, verified", tmp / "cache", filled=side.root / "filled")
            log = tmp / f"worker-{side.label}.log"
            seconds = asyncio.run(process_to_ready(side, tmp / "cache", log))
            side.times["ready"].append((seconds, 0.0, 0.0, 0.0))
            print(f"{n_items} {side.label} reco-worker → /readyz: {seconds:.2f} s")
        print(f"  load average {os.getloadavg()}", flush=True)
    rows = []
    for case in CASES:
        for side in sides:
            imports = statistics.median(t[0] for t in side.times[case])
            loads = sorted(t[1] for t in side.times[case])
            total = statistics.median(t[0] + t[1] for t in side.times[case])
            file_mib = statistics.median(t[2] for t in side.times[case])
            anon_mib = statistics.median(t[3] for t in side.times[case])
            rows.append(
                f"| {n_items:,} | {size / 2**20:.0f} | {case} | {side.label} | {imports:.2f} | "
                f"{statistics.median(loads):.2f} ({loads[0]:.2f}-{loads[-1]:.2f}) | "
                f"{file_mib:.0f} / {anon_mib:.0f} | {total:.2f} |"
            )
    for side in sides if ready else ():
        ready_s = sorted(t[0] for t in side.times["ready"])
        rows.append(
            f"| {n_items:,} | {size / 2**20:.0f} | shared, verified: `reco-worker` → `/readyz` | "
            f"{side.label} |  |  |  | {statistics.median(ready_s):.2f} "
            f"({ready_s[0]:.2f}-{ready_s[-1]:.2f}) |"
        )
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--write"]:  # a side writing its artifact with its own code
        print(build_model(Path(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", help="another checkout's .venv/bin/python")
    parser.add_argument("--compare-label", default="before")
    parser.add_argument("--label", default="this tree")
    parser.add_argument("--ready", action="store_true", help="also reco-worker → /readyz")
    parser.add_argument("--no-bytecode", action="store_true", help="compile at every start")
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()}", flush=True)
    print(
        "bytecode:",
        "none (compiled at every start)" if args.no_bytecode else "cached, as the image",
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="reco-bench-start-") as tmp:
        root = Path(tmp)
        for n_items in args.items:
            bytecode = not args.no_bytecode
            sides = [Side(args.label, sys.executable, root / "this", bytecode)]
            if args.compare:
                sides.insert(0, Side(args.compare_label, args.compare, root / "other", bytecode))
            rows += measure(sides, n_items, args.rounds, args.ready, root)
            for side in sides:
                shutil.rmtree(side.root)
    print(f"\n{datetime.now(UTC):%H:%M} UTC, load average at the end {os.getloadavg()}\n")
    print(
        "| items | artifact MiB | cache | code | imports s | model load s (range) "
        "| RSS growth MiB: files / memory | start → ready s |"
    )
    print("|---:|---:|---|---|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
