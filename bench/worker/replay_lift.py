"""Replay lift: do real-time lists beat static ones on a synthetic shop with drift? And by how much.

1. A synthetic shop (``reco_common.synth``, sessions, a funnel of actions, and ``--drift`` of
   the users switching taste mid-period) is cut by time into *train* (first two thirds),
   *tune* (the next sixth) and *test* (the last sixth).
2. The real trainer (``reco-trainer train``, LightFM) learns a model from *train*.
3. On *tune*, a grid of the policy's parameters (blend by half-life) is replayed through the
   worker's scoring code; the best first-time ndcg@k picks the defaults.
4. On *test*, untouched so far, ``reco-worker replay`` (the command, as an operator runs it)
   reports static vs real-time vs popular for the chosen parameters.

    uv run python bench/worker/replay_lift.py --interactions 300000 --drift 0.3
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from reco_common.interactions import TS, read_interactions, write_log
from reco_common.settings import S3Settings
from reco_common.synth import ShopConfig, generate
from reco_worker.model_store import load_serving_model
from reco_worker.replay import replay
from reco_worker.scoring import Policy
from reco_worker.settings import WorkerSettings

BLENDS = (0.0, 0.25, 0.5, 0.75, 1.0)
HALF_LIVES = (300.0, 1800.0, 3600.0, 6 * 3600.0, 24 * 3600.0)
HISTORY_LEN = 50


def split(log: pa.Table) -> dict[str, pa.Table]:
    ts = log.column(TS).to_numpy()
    start, end = ts.min(), ts.max()
    cut_tune = start + (end - start) * 4 / 6
    cut_test = start + (end - start) * 5 / 6
    return {
        "train": log.filter(pa.array(ts < cut_tune)),
        "tune": log.filter(pa.array((ts >= cut_tune) & (ts < cut_test))),
        "test": log.filter(pa.array(ts >= cut_test)),
    }


def train(train_file: Path, store: Path, args: argparse.Namespace) -> str:
    command = [
        str(Path(sys.executable).with_name("reco-trainer")),
        "train",
        "--interactions",
        str(train_file),
        "--output",
        store.as_uri(),
        "--model-name",
        "shop",
        "--no-publish",
        "--components",
        str(args.components),
        "--seed",
        str(args.seed),
    ]
    subprocess.run(command, check=True, timeout=3600)
    manifests = sorted(store.glob("models/shop/*/manifest.json"))
    if not manifests:
        raise SystemExit(f"the trainer wrote no model below {store}")
    return manifests[-1].parent.as_uri()


def tune(model_uri: str, tune_file: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as cache:
        model = load_serving_model(model_uri, s3=S3Settings(), cache_dir=Path(cache))
    log = read_interactions(str(tune_file))
    rows = []
    for blend, half_life in itertools.product(BLENDS, HALF_LIVES):
        if blend == 0 and half_life != HALF_LIVES[0]:
            continue  # blend 0: known users ignore recent items; cold starts still use them
        policy = Policy(blend=blend, half_life_s=half_life, top_n=args.k)
        report = replay(model, log, policy=policy, history_len=HISTORY_LEN, k=args.k)
        row = {
            "blend": blend,
            "half_life_s": half_life,
            "first_time_ndcg": report["first_time"]["realtime"]["ndcg"],
            "first_time_hit_rate": report["first_time"]["realtime"]["hit_rate"],
            "static_ndcg": report["first_time"]["static"]["ndcg"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def evaluate(
    model_uri: str,
    test_file: Path,
    out: Path,
    blend: float,
    half_life: float,
    k: int,
    *,
    exclude_seen: bool = True,
) -> dict[str, Any]:
    command = [
        str(Path(sys.executable).with_name("reco-worker")),
        "replay",
        "--model",
        model_uri,
        "--events",
        str(test_file),
        "--k",
        str(k),
        "--output",
        str(out),
        "--blend",
        str(blend),
        "--half-life-s",
        str(half_life),
        "--exclude-seen" if exclude_seen else "--keep-seen",
    ]
    subprocess.run(command, check=True, timeout=3600)
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def table(report: dict[str, Any], k: int) -> str:
    lines = [
        f"| events | strategy | hit-rate@{k} | ndcg@{k} |",
        "|---|---|---:|---:|",
    ]
    for part in ("first_time", "all"):
        section = report[part]
        for strategy in ("static", "realtime", "popular"):
            figures = section[strategy]
            lines.append(
                f"| {part} ({section['events']:,}) | {strategy} | {figures['hit_rate']:.4f} "
                f"| {figures['ndcg']:.4f} |"
            )
        lift = section["lift"]
        lines.append(
            f"| {part} | lift realtime/static | {lift['hit_rate']:+.1%} | {lift['ndcg']:+.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interactions", type=int, default=300_000)
    parser.add_argument("--drift", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--components", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--output", type=Path, default=Path("var/bench/worker-replay.json"))
    args = parser.parse_args()
    shop = generate(ShopConfig(n_interactions=args.interactions, drift=args.drift, seed=args.seed))
    with tempfile.TemporaryDirectory(prefix="reco-bench-replay-") as tmp:
        root = Path(tmp)
        files = {}
        for name, part in split(shop.log).items():
            files[name] = root / f"{name}.parquet"
            write_log(part, str(files[name]))
            print(f"{name}: {part.num_rows:,} events", flush=True)
        model_uri = train(files["train"], root / "store", args)
        grid = tune(model_uri, files["tune"], args)
        best = max(grid, key=lambda row: row["first_time_ndcg"])
        print(
            f"chosen on tune: blend {best['blend']}, half-life {best['half_life_s']:g} s",
            flush=True,
        )
        shipped = WorkerSettings().policy
        runs = {
            "grid_best": (best["blend"], best["half_life_s"], True),
            "defaults": (shipped.blend, shipped.half_life_s, True),
            "defaults_keep_seen": (shipped.blend, shipped.half_life_s, False),
        }
        reports = {
            name: evaluate(
                model_uri,
                files["test"],
                root / f"{name}.json",
                blend,
                half_life,
                args.k,
                exclude_seen=exclude,
            )
            for name, (blend, half_life, exclude) in runs.items()
        }
    result = {
        "shop": {"interactions": args.interactions, "drift": args.drift, "seed": args.seed},
        "users": int(np.unique(shop.log.column("user_id").to_numpy(zero_copy_only=False)).size),
        "items": shop.items.num_rows,
        "grid_on_tune": grid,
        "chosen_on_tune": {"blend": best["blend"], "half_life_s": best["half_life_s"]},
        "test": reports,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    for name, report in reports.items():
        policy = report["policy"]
        print(
            f"\n{name}: blend {policy['blend']}, half-life {policy['half_life_s']:g} s, "
            f"exclude_seen {policy['exclude_seen']}"
        )
        print(table(report, args.k))


if __name__ == "__main__":
    main()
