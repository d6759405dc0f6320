"""Real-time policy on MovieLens: a temporal replay of static, naive, real-time and popular lists.

    uv run python bench/quality/replay_quality.py                       # cut 0.8, all users
    uv run python bench/quality/replay_quality.py --cut 0.7 --users odd # a confirmation split
    uv run python bench/quality/replay_quality.py --params '{"members": 1}' --policy '{"blend": 0.5}'

The positives are sorted by time; the first ``cut`` of them train a model with
``reco-trainer train`` defaults (the trainer's own job), and the next 20 % of all positives
(``--replay-fraction``) are replayed in order through ``reco_worker.replay`` exactly as
``reco-worker replay`` does: before each event, is its item in the list the user had just then?
``--users even|odd`` keeps the replayed events of one half of the users (split by a hash of the
user id), so that a policy chosen on one half can be confirmed on the other. ``--grid`` replays
a small grid of policies around the defaults (real-time hit-rate@10 each) instead of the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))

from movielens import DEFAULT_RATINGS, load_positives, write_native

from reco_common.interactions import USER_ID, Interactions
from reco_common.settings import S3Settings
from reco_trainer.params import TrainParams
from reco_trainer.pipeline import Inputs, Job, run_job
from reco_trainer.progress import LogProgress
from reco_worker.model_store import load_serving_model
from reco_worker.replay import STRATEGIES, replay
from reco_worker.scoring import Policy, ServingModel
from reco_worker.settings import WorkerSettings


def temporal_parts(
    table: pa.Table, *, cut: float, replay_fraction: float
) -> tuple[pa.Table, pa.Table]:
    start = round(cut * len(table))
    return table.slice(0, start), table.slice(start, round(replay_fraction * len(table)))


def user_half(table: pa.Table, half: str) -> pa.Table:
    if half == "all":
        return table
    parity = 0 if half == "even" else 1
    keep = [
        hashlib.sha256(u.encode()).digest()[0] % 2 == parity
        for u in table.column(USER_ID).to_pylist()
    ]
    return table.filter(pa.array(keep))


def train_model(
    train: pa.Table, held: pa.Table, workdir: Path, params: TrainParams
) -> ServingModel:
    train_uri = write_native(train, workdir / "train.csv")
    held_uri = write_native(held, workdir / "held.csv")
    outcome = run_job(
        Job(
            model_name="replay",
            store_uri=(workdir / "store").as_uri(),
            params=params,
            s3=S3Settings(),
            kafka=None,
            progress=LogProgress,
        ),
        Inputs(interactions=[train_uri], test=held_uri),
    )
    return load_serving_model(outcome.artifact_uri, s3=S3Settings(), cache_dir=workdir / "cache")


def default_policy() -> tuple[Policy, int]:
    settings = WorkerSettings()
    return settings.policy, settings.history_len


def run_replay(
    model: ServingModel, events: pa.Table, policy: Policy, history_len: int, k: int = 10
) -> dict:
    return replay(
        model, Interactions(table=events, sources=()), policy=policy, history_len=history_len, k=k
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", type=Path, default=DEFAULT_RATINGS)
    parser.add_argument("--cut", type=float, default=0.8)
    parser.add_argument("--replay-fraction", type=float, default=0.2)
    parser.add_argument("--users", choices=("all", "even", "odd"), default="all")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="JSON report")
    parser.add_argument(
        "--grid",
        nargs="?",
        type=json.loads,
        const=GRID,
        default=None,
        help="replay a grid of policies (JSON {field: [values]}; default: GRID)",
    )
    parser.add_argument(
        "--params", type=json.loads, default={}, help="trainer parameters over the defaults (JSON)"
    )
    parser.add_argument(
        "--policy", type=json.loads, default={}, help="policy values over the worker's (JSON)"
    )
    args = parser.parse_args()
    train, events = temporal_parts(
        load_positives(args.ratings), cut=args.cut, replay_fraction=args.replay_fraction
    )
    events = user_half(events, args.users)
    policy, history_len = default_policy()
    history_len = args.policy.pop("history_len", history_len)
    policy = dataclasses.replace(policy, **args.policy)
    params = TrainParams.model_validate({"threads": 1, "seed": args.seed, **args.params})
    with tempfile.TemporaryDirectory(prefix="reco-replay-quality-") as tmp:
        model = train_model(train, events, Path(tmp), params)
        if args.grid is not None:
            grid(model, events, policy, history_len, args.grid)
            return
        report = run_replay(model, events, policy, history_len)
    print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


GRID = {
    "neighbour_weight": (0.0, 2.0, 5.0, 10.0, 20.0),
    "half_life_s": (30.0, 120.0, 600.0, 1800.0),
    "blend": (0.25, 0.5, 0.75, 1.0),
    "neighbour_history": (3, 10, 30),
}


def grid(
    model: ServingModel,
    events: pa.Table,
    policy: Policy,
    history_len: int,
    values_of: dict[str, Sequence[float]],
) -> None:
    """One parameter at a time around ``policy``: the real-time hit-rate@10 of each value
    (``history_len``, the worker's setting, is one of them too)."""
    for name, values in values_of.items():
        for value in values:
            length = int(value) if name == "history_len" else history_len
            tried = (
                policy if name == "history_len" else dataclasses.replace(policy, **{name: value})
            )
            report = run_replay(model, events, tried, length)
            figures = report["all"]
            print(
                f"{name}={value}: realtime {figures['realtime']['hit_rate']:.4f} "
                f"naive {figures['naive']['hit_rate']:.4f} static {figures['static']['hit_rate']:.4f}",
                flush=True,
            )


def print_table(report: dict) -> None:
    print(f"{report['events']} events, {report['users']} users ({report['unknown_users']} cold)")
    print("| strategy | hit-rate@10 | ndcg@10 | hit-rate@10 (first time) |")
    print("|---|---|---|---|")
    for name in STRATEGIES:
        a, f = report["all"][name], report["first_time"][name]
        print(f"| {name} | {a['hit_rate']:.4f} | {a['ndcg']:.4f} | {f['hit_rate']:.4f} |")


if __name__ == "__main__":
    main()
