"""Trainer benchmark: time and peak memory to train + evaluate on synthetic shops of several sizes.

    uv run python bench/trainer/train_bench.py                 # 100k, 1M, 5M
    uv run python bench/trainer/train_bench.py --sizes 100000  # one size
    uv run python bench/trainer/train_bench.py --sizes 1000000 --params '{}' \
        --params '{"loss": "warp", "components": 32}'          # configurations side by side

For each size a child process generates the shop (with taste drift) into a Parquet file, then a
fresh child process runs the whole training job on it exactly as ``reco-trainer train
--no-publish`` does (read, temporal split, LightFM with early stopping, the trainer's defaults:
threads, loss and epochs chosen from the data unless ``--threads``/``--params`` say otherwise,
evaluation of the model and the popularity baseline, report, artifact on a file:// store).
The child's own ``ru_maxrss`` is its peak resident memory (LightFM's C arrays included).
Results are printed as a Markdown table and JSON lines. ``--params JSON`` (repeatable) trains
each set of parameter overrides on the same shop, one after the other (default: ``{}``, the
trainer's defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SIZES = (100_000, 1_000_000, 5_000_000)


def generate(size: int, directory: Path, seed: int) -> dict[str, float]:
    from reco_common.synth import ShopConfig, generate, write_shop

    started = time.perf_counter()
    shop = generate(ShopConfig(n_interactions=size, drift=0.1, seed=seed))
    write_shop(shop, str(directory))
    return {
        "generate_s": time.perf_counter() - started,
        "users": shop.config.users,
        "items": shop.config.items,
    }


def train(directory: Path, threads: int | None, overrides: dict[str, object]) -> dict[str, object]:
    from reco_common.settings import S3Settings
    from reco_trainer.params import TrainParams
    from reco_trainer.pipeline import Inputs, Job, run_job
    from reco_trainer.progress import LogProgress

    started = time.perf_counter()
    outcome = run_job(
        Job(
            model_name="bench",
            store_uri=(directory / "store").as_uri(),
            params=TrainParams.model_validate(
                {**overrides, **({"threads": threads} if threads else {})}
            ),
            s3=S3Settings(),
            kafka=None,
            progress=LogProgress,
        ),
        Inputs(interactions=[str(directory / "interactions.parquet")]),
    )
    total = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    assert outcome.report is not None
    details = outcome.report.details
    return {
        "total_s": round(total, 2),
        "train_s": details["seconds"]["train"],
        "evaluate_s": details["seconds"]["evaluate"],
        "epochs_run": details["epochs_run"],
        "params": details["params"],
        "best_epoch": outcome.report.best_epoch,
        "fit_pairs": details["fit_pairs"],
        "model": outcome.metrics.model,
        "baseline": outcome.metrics.baseline,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "load_1min": round(os.getloadavg()[0], 1),
    }


def _child(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--threads", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--params", action="append", default=None, help="JSON parameter overrides (repeatable)"
    )
    parser.add_argument("--child", choices=["generate", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generate":
        print(json.dumps(generate(args.sizes[0], args.dir, args.seed)))
        return
    if args.child == "train":
        print(json.dumps(train(args.dir, args.threads, json.loads(args.params[0]))))
        return
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="reco-bench-") as tmp:
            shop = _child("--child", "generate", "--sizes", str(size), "--dir", tmp)
            for overrides in args.params or ["{}"]:
                row = {**shop, "interactions": size, "overrides": overrides}
                threads = ["--threads", str(args.threads)] if args.threads else []
                row.update(
                    _child("--child", "train", "--dir", tmp, *threads, "--params", overrides)
                )
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(rows))


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| interactions | params | trained as | users | items | train+evaluate (s) | CPU (s) "
        "| of which training "
        "| evaluation "
        "| epochs (kept) | peak RSS (MiB) | precision@10 model | popularity | ndcg@10 model "
        "| popularity | AUC model | popularity | load (1 min) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        model, base = r["model"], r["baseline"]
        assert isinstance(model, dict)
        assert isinstance(base, dict)
        lines.append(
            f"| {r['interactions']:,} | `{r['overrides']}` | {_trained_as(r['params'])} "
            f"| {r['users']:,} | {r['items']:,} | {r['total_s']} | {r['cpu_s']} "
            f"| {r['train_s']} | {r['evaluate_s']} | {r['epochs_run']} ({r['best_epoch']}) "
            f"| {r['peak_rss_mb']} | {model['precision@10']:.4f} | {base['precision@10']:.4f} "
            f"| {model['ndcg@10']:.4f} | {base['ndcg@10']:.4f} | {model['auc']:.3f} "
            f"| {base['auc']:.3f} | {r['load_1min']} |"
        )
    return "\n".join(lines)


def _trained_as(params: object) -> str:
    """The resolved loss, weighting, threads and early stopping of one run."""
    assert isinstance(params, dict)
    return (
        f"{params['loss']}, {params['weighting']}, {params['threads']} thr, "
        f"min {params['min_epochs']} / patience {params['patience']}"
    )


if __name__ == "__main__":
    main()
