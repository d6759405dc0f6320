"""Trainer quality on MovieLens: plain LightFM vs our defaults vs tuned vs popularity.

    uv run python bench/quality/trainer_quality.py                   # seeds 0 1 2
    uv run python bench/quality/trainer_quality.py --seeds 0 --tune-minutes 10
    uv run python bench/quality/trainer_quality.py --threads 2 --no-cold   # a setting apart
    uv run python bench/quality/trainer_quality.py --params '{"loss": "warp-kos"}' --no-cold

For each seed the positives are split per user (80/20, seeded) and every method is evaluated
on the same matrices (:mod:`movielens`). ``plain`` is LightFM with its documented defaults
(WARP, 10 components, 30 epochs, no early stopping); ``defaults`` is ``reco-trainer train``
with our defaults as shipped (``--threads`` overrides the threads the trainer would choose),
run through the trainer's own job (``run_job``) on the training part;
``tuned`` is ``reco-trainer tune`` with the given budget (skipped without ``--tune-minutes``).
Cold users (a user-disjoint quarter of the users, absent from training) are reported apart:
the worker serves them the popular list until they act.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from lightfm import LightFM

sys.path.insert(0, str(Path(__file__).parent))

from movielens import (
    DEFAULT_RATINGS,
    MIN_RATING,
    SHOWN,
    Matrices,
    load_positives,
    matrix,
    metrics,
    per_user_split,
    user_disjoint_split,
    write_native,
)

from reco_common.artifact_cache import load_artifact
from reco_common.contracts import ActionType, HistoryEntry
from reco_common.interactions import ITEM_ID, TS, USER_ID, WEIGHT
from reco_common.settings import S3Settings
from reco_common.storage import open_store
from reco_trainer.evaluation import EvalSet, popularity_scorer, popularity_scores
from reco_trainer.params import TrainParams
from reco_trainer.pipeline import Inputs, Job, Outcome, run_job
from reco_trainer.progress import LogProgress
from reco_trainer.training import representations
from reco_trainer.tune import Budget
from reco_worker.model_store import load_serving_model
from reco_worker.scoring import build_query
from reco_worker.settings import WorkerSettings


def plain_lightfm(data: Matrices, seed: int) -> dict[str, float]:
    model = LightFM(no_components=10, loss="warp", random_state=seed)
    model.fit(data.train, epochs=30, num_threads=1)
    users, items = representations(model, None, None)
    return metrics(data.align(data.users, data.items, users, items), data.eval_set())


def trainer_job(
    data_dir: Path,
    train_uri: str,
    test_uri: str | None,
    params: TrainParams,
    tune: Budget | None = None,
) -> Outcome:
    return run_job(
        Job(
            model_name="quality",
            store_uri=(data_dir / "store").as_uri(),
            params=params,
            s3=S3Settings(),
            kafka=None,
            progress=LogProgress,
            tune=tune,
        ),
        Inputs(interactions=[train_uri], test=test_uri),
    )


def artifact_metrics(outcome: Outcome, data: Matrices) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        arrays = load_artifact(open_store(outcome.artifact_uri), cache_dir=Path(cache)).arrays
        score = data.align(
            arrays.user_ids,
            arrays.item_ids,
            np.asarray(arrays.user_factors),
            np.asarray(arrays.item_factors),
        )
    return metrics(score, data.eval_set())


def one_seed(
    table: pa.Table,
    seed: int,
    params: TrainParams,
    workdir: Path,
    *,
    tune_minutes: float | None,
    cold: bool,
) -> dict[str, dict[str, Any]]:
    train, test = per_user_split(table, seed=seed)
    data = Matrices.of(train, test)
    run_dir = workdir / f"seed{seed}"
    train_uri = write_native(train, run_dir / "train.csv")
    test_uri = write_native(test, run_dir / "test.csv")
    results = {
        "popularity": metrics(popularity_scorer(popularity_scores(data.train)), data.eval_set())
    }
    started = time.perf_counter()
    results["plain"] = plain_lightfm(data, seed)
    results["plain"]["seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    outcome = trainer_job(run_dir, train_uri, test_uri, params.model_copy(update={"seed": seed}))
    results["defaults"] = artifact_metrics(outcome, data)
    results["defaults"]["seconds"] = time.perf_counter() - started
    results["defaults"]["load"] = os.getloadavg()[0]
    results["defaults"]["trained_as"] = trained_as(outcome)
    if tune_minutes:
        started = time.perf_counter()
        budget = Budget(trials=10_000, budget_s=tune_minutes * 60)
        tuned = trainer_job(run_dir, train_uri, test_uri, params.updated({"seed": seed}), budget)
        results["tuned"] = artifact_metrics(tuned, data)
        results["tuned"]["seconds"] = time.perf_counter() - started
        results["tuned"]["load"] = os.getloadavg()[0]
        assert tuned.report is not None
        assert tuned.report.search is not None
        search = tuned.report.search
        results["tuned"]["trials"] = len(search["trials"])
        results["tuned"]["complete"] = sum(t["state"] == "complete" for t in search["trials"])
        results["tuned"]["best"] = search["best"]
        return results
    if cold:
        results["cold"] = cold_users(table, seed, params.model_copy(update={"seed": seed}), workdir)
    return results


def trained_as(outcome: Outcome) -> dict[str, Any]:
    """What the trainer chose (its resolved parameters) and the epochs it ran."""
    assert outcome.report is not None
    details = outcome.report.details
    chosen = ("loss", "weighting", "threads", "min_epochs", "patience")
    return {
        **{key: details["params"][key] for key in chosen},
        "fit_pairs": details["fit_pairs"],
        "epochs_run": details["epochs_run"],
        "best_epoch": outcome.report.best_epoch,
        "bias_scale": details["bias_scale"],
    }


def cold_users(table: pa.Table, seed: int, params: TrainParams, workdir: Path) -> dict:
    """Users absent from training (a user-disjoint quarter): before they act they get the
    popular list; after the older half of their positives, the worker's real-time policy (its
    cold-start branch); both judged on the newer half."""
    known, cold = user_disjoint_split(table, seed=seed, fraction=0.25)
    history, future = per_user_halves(cold)
    run_dir = workdir / f"cold{seed}"
    outcome = trainer_job(run_dir, write_native(known, run_dir / "known.csv"), None, params)
    with tempfile.TemporaryDirectory() as cache:
        model = load_serving_model(outcome.artifact_uri, s3=S3Settings(), cache_dir=Path(cache))
    users = sorted(set(cold.column(USER_ID).to_pylist()))
    items = model.item_ids.tolist()
    data = Matrices(users, items, matrix(history, users, items), matrix(future, users, items))
    popularity = np.zeros(len(items), dtype=np.float32)
    for item, score in zip(model.popular_items, model.popular_scores, strict=True):
        popularity[model.item_index[item]] = score
    entries = history_entries(history)
    policy = WorkerSettings().policy

    def realtime(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        queries = [build_query(model, users[r], entries.get(users[r], []), policy)[0] for r in rows]
        return np.stack(
            [popularity if q is None else model.items @ q.astype(np.float32) for q in queries]
        )

    empty = EvalSet.build(known=data.train * 0, held_out=data.test + data.train)
    return {
        "users": len(users),
        "popular_before_acting": metrics(popularity_scorer(popularity), empty),
        "popularity_after_half": metrics(popularity_scorer(popularity), data.eval_set()),
        "realtime_after_half": metrics(realtime, data.eval_set()),
    }


def per_user_halves(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Each user's older half of rows (time-sorted table) and newer half."""
    users = table.column(USER_ID).to_pylist()
    counts = Counter(users)
    seen: Counter[str] = Counter()
    older = []
    for user in users:
        older.append(seen[user] < counts[user] // 2)
        seen[user] += 1
    mask = pa.array(older)
    return table.filter(mask), table.filter(pc.invert(mask))


def history_entries(table: pa.Table) -> dict[str, list[HistoryEntry]]:
    out: dict[str, list[HistoryEntry]] = {}
    for n, row in enumerate(table.to_pylist()):
        entry = HistoryEntry(str(n), row[ITEM_ID], ActionType.VIEW, row[WEIGHT], row[TS])
        out.setdefault(row[USER_ID], []).append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=Path, default=DEFAULT_RATINGS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument(
        "--tune-minutes", type=float, default=None, help="also tune; skips cold users"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="train on this many threads (default: auto)"
    )
    parser.add_argument("--no-cold", action="store_true", help="skip the cold users")
    parser.add_argument(
        "--params", type=json.loads, default={}, help="trainer parameters over the defaults (JSON)"
    )
    parser.add_argument(
        "--min-rating", type=float, default=MIN_RATING, help="positives: ratings at least this"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("reco_trainer.progress").setLevel(logging.WARNING)
    table = load_positives(args.ratings, args.min_rating)
    rows = []
    with tempfile.TemporaryDirectory(prefix="reco-quality-") as tmp:
        params = TrainParams.model_validate({"threads": args.threads, **args.params})
        for seed in args.seeds:
            result = one_seed(
                table,
                seed,
                params,
                Path(tmp),
                tune_minutes=args.tune_minutes,
                cold=not args.no_cold,
            )
            rows.append({"seed": seed, **result})
            print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


def print_table(rows: list[dict]) -> None:
    methods = [m for m in ("plain", "defaults", "tuned", "popularity") if m in rows[0]]
    ratios = ("precision@5", "precision@10")
    print(
        "| method | "
        + " | ".join(SHOWN)
        + " | "
        + " | ".join(f"x plain {r}" for r in ratios)
        + " |"
    )
    print("|---" * (len(SHOWN) + len(ratios) + 1) + "|")
    for method in methods:
        means = {m: np.mean([r[method][m] for r in rows]) for m in SHOWN}
        times = [means[m] / np.mean([r["plain"][m] for r in rows]) for m in ratios]
        cells = [f"{means[m]:.4f}" for m in SHOWN] + [f"{t:.2f}" for t in times]
        print(f"| {method} | " + " | ".join(cells) + " |")
    for method in methods:
        per_seed = ["/".join(f"{r[method][m] / r['plain'][m]:.3f}" for m in ratios) for r in rows]
        print(f"{method} / plain (p@5/p@10) per seed {[r['seed'] for r in rows]}: {per_seed}")


if __name__ == "__main__":
    main()
