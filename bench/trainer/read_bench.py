"""Reading benchmark: seconds to read a generated interaction log with ``read_interactions``.

    uv run python bench/trainer/read_bench.py                      # 1M rows, CSV and JSONL
    uv run python bench/trainer/read_bench.py --rows 100000 --formats jsonl

The log has the columns the archive writes (``event_id``, ``user_id``, ``item_id``,
``action``, ``weight`` mostly null, ``ts`` epoch seconds), generated once per format with a fixed
seed into a temporary directory (``write_log``); each file is then read ``--repeat`` times in
this process (a ``file://`` location, as ``reco-trainer train -i`` does) and the best and the
median wall time are printed as a Markdown table and JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from reco_common.interactions import LogFormat, read_interactions, write_log

ACTIONS = ("view", "click", "cart", "purchase")


def generate(rows: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, rows // 25 + 1, rows)
    items = rng.zipf(1.3, rows) % (rows // 100 + 1)
    weight = np.where(rng.random(rows) < 0.05, 2.5, np.nan)
    return pa.table(
        {
            "event_id": pa.array([f"e{n}" for n in range(rows)]),
            "user_id": pa.array([f"u{u}" for u in users]),
            "item_id": pa.array([f"i{i}" for i in items]),
            "action": pa.array([ACTIONS[a] for a in rng.integers(0, 4, rows)]),
            "weight": pa.array(weight, from_pandas=True),
            "ts": pa.array(1.7e9 + np.sort(rng.random(rows)) * 30 * 86_400),
        }
    )


def measure(path: Path, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        log = read_interactions(str(path))
        seconds.append(time.perf_counter() - started)
        assert len(log) > 0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", nargs="+", default=["csv", "jsonl"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = generate(args.rows, args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="reco-read-bench-") as tmp:
        for name in args.formats:
            path = Path(tmp) / f"log.{name}"
            write_log(table, str(path), fmt=LogFormat(name))
            seconds = measure(path, args.repeat)
            results.append(
                {
                    "format": name,
                    "rows": args.rows,
                    "mib": round(path.stat().st_size / 2**20, 1),
                    "best_s": round(min(seconds), 2),
                    "median_s": round(statistics.median(seconds), 2),
                }
            )
    print("| format | rows | file (MiB) | best (s) | median (s) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['format']} | {r['rows']:,} | {r['mib']} | {r['best_s']} | {r['median_s']} |")
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
