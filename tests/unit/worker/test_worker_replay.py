"""The offline replay: the worker's scoring, time-ordered, against static and popular lists."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from typer.testing import CliRunner
from worker_models import clustered_arrays

from reco_common.artifact import ItemNeighbours, UserItems, write_artifact
from reco_common.contracts import EvalMetrics
from reco_common.interactions import Interactions
from reco_common.storage import open_store
from reco_worker.__main__ import app
from reco_worker.replay import replay, summary
from reco_worker.scoring import Policy, ServingModel

T0 = 1_800_000_000.0


def drifting_log() -> pa.Table:
    """``u0`` (trained on cluster 0) now browses cluster 2; a stranger browses cluster 3."""
    rows = [("u0", f"i2-{n}", T0 + 60 * n) for n in range(8)]
    rows += [("stranger", f"i3-{n}", T0 + 30 + 60 * n) for n in range(8)]
    rows.sort(key=lambda r: r[2])
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "weight": pa.array([1.0] * len(rows), pa.float32()),
            "ts": [r[2] for r in rows],
        }
    )


def test_real_time_lists_follow_a_drifting_user(clustered: ServingModel) -> None:
    log = Interactions(table=drifting_log(), sources=())
    report = replay(clustered, log, policy=Policy(blend=0.7), history_len=50, k=25)
    assert report["events"] == 16
    assert report["users"] == 2
    assert report["unknown_users"] == 1
    first = report["first_time"]
    assert first["events"] == 16
    # Static: u0 keeps cluster 0 (no hit); the stranger keeps the popular list (6 per cluster).
    assert first["static"]["hit_rate"] == 6 / 16
    # Real time: after each user's first event the list is their current cluster (k = 25).
    assert first["realtime"]["hit_rate"] == 15 / 16
    assert first["lift"]["hit_rate"] == (15 / 16) / (6 / 16) - 1
    assert first["popular"]["hit_rate"] == 12 / 16
    # Naive: the stranger's mean embedding is cluster 3 as well (7 hits after the first
    # event); u0's trained vector plus that mean splits the list between clusters 0 and 2.
    assert first["naive"]["hit_rate"] == 13 / 16
    assert first["lift_over_naive"]["hit_rate"] == (15 / 16) / (13 / 16) - 1
    assert "lift realtime/static" in summary(report)
    assert "lift realtime/naive" in summary(report)


def test_repeats_count_only_in_all_events(clustered: ServingModel) -> None:
    table = pa.table(
        {
            "user_id": ["u0", "u0", "u0"],
            "item_id": ["i0-0", "i0-0", "i0-1"],
            "weight": pa.array([1.0, 1.0, 1.0], pa.float32()),
            "ts": [T0, T0 + 1, T0 + 2],
        }
    )
    report = replay(clustered, Interactions(table, ()), policy=Policy(), history_len=50, k=25)
    assert report["all"]["events"] == 3
    assert report["first_time"]["events"] == 2
    # The static list never changes: cluster 0 holds every event; the real-time one excludes i0-0.
    assert report["all"]["static"]["hit_rate"] == 1.0
    assert report["all"]["realtime"]["hit_rate"] == 2 / 3


def test_the_command_writes_a_report(tmp_path: Path) -> None:
    uri = write_artifact(
        open_store((tmp_path / "store").as_uri()),
        model_name="shop",
        version="v1",
        arrays=clustered_arrays(),
        created_at=datetime.now(UTC),
        data_snapshot="test",
        params={},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
    )
    events = tmp_path / "events.jsonl"
    lines = [
        {**row, "action": "click", "event_id": f"e{n}"}
        for n, row in enumerate(drifting_log().select(["user_id", "item_id", "ts"]).to_pylist())
    ]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            "--model",
            uri,
            "--events",
            str(events),
            "--k",
            "25",
            "--output",
            str(output),
            "--blend",
            "0.7",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert report["policy"]["blend"] == 0.7
    assert report["first_time"]["realtime"]["hit_rate"] == 15 / 16
    assert "lift realtime/static" in result.output


def test_the_naive_baseline_gets_no_neighbours_and_static_lists_no_training_items(
    clustered: ServingModel,
) -> None:
    arrays = clustered_arrays()
    n = len(arrays.item_ids)
    rows = np.full((n, 1), -1, dtype=np.int32)
    rows[arrays.item_ids.index("i2-0"), 0] = arrays.item_ids.index("i3-0")
    trained_on = sorted(arrays.item_ids.index(f"i0-{k}") for k in range(20))
    model = ServingModel(
        name="shop",
        version="v1",
        uri="file:///m",
        arrays=dataclasses.replace(
            arrays,
            neighbours=ItemNeighbours(rows, np.ones((n, 1), dtype=np.float32)),
            user_items=UserItems(
                np.array([0, 20, 20, 20, 20], dtype=np.int64), np.array(trained_on, np.int32)
            ),
        ),
    )
    table = pa.table(
        {
            "user_id": ["u0", "u0", "u0"],
            "item_id": ["i0-20", "i2-0", "i3-0"],
            "weight": pa.array([1.0, 1.0, 1.0], pa.float32()),
            "ts": [T0, T0 + 1, T0 + 2],
        }
    )
    policy = Policy(blend=0.0, neighbour_weight=100.0)
    report = replay(model, Interactions(table, ()), policy=policy, history_len=50, k=5)
    # The static list skips the 20 trained items of cluster 0 and holds the other five.
    assert report["all"]["static"]["hit_rate"] == 1 / 3
    # After i2-0 only the real-time list brings its neighbour i3-0 to the top.
    assert report["all"]["realtime"]["hit_rate"] == 2 / 3
    assert report["all"]["naive"]["hit_rate"] == 1 / 3


def _artifact(tmp_path: Path) -> str:
    return write_artifact(
        open_store((tmp_path / "store").as_uri()),
        model_name="shop",
        version="v1",
        arrays=clustered_arrays(),
        created_at=datetime.now(UTC),
        data_snapshot="test",
        params={},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
    )


def test_the_command_reads_a_log_through_a_column_map(tmp_path: Path) -> None:
    """The trainer's --columns syntax: a log with its own column names (and a threshold)."""
    events = tmp_path / "ratings.csv"
    rows = drifting_log().to_pylist()
    lines = [
        f"{r['user_id']},{r['item_id']},{4 + n % 2},{int(r['ts'])}" for n, r in enumerate(rows)
    ]
    lines.append(f"u0,i2-0,1,{int(T0) + 10_000}")  # below --min-weight: not replayed
    events.write_text("who,what,stars,when\n" + "\n".join(lines) + "\n")
    output = tmp_path / "report.json"
    args = ["replay", "--model", _artifact(tmp_path), "--events", str(events), "--k", "25"]
    mapping = "user=who,item=what,weight=stars,timestamp=when"
    flags = ["--output", str(output), "--blend", "0.7", "--columns", mapping, "--min-weight", "4"]
    result = CliRunner().invoke(app, [*args, *flags])
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert report["events"] == 16
    assert report["first_time"]["realtime"]["hit_rate"] == 15 / 16


def test_the_command_names_a_bad_map_or_column(tmp_path: Path) -> None:
    events = tmp_path / "ratings.csv"
    events.write_text("who,what\nu0,i2-0\n")
    args = ["replay", "--model", _artifact(tmp_path), "--events", str(events)]
    args += ["--output", str(tmp_path / "r.json")]
    bad_map = CliRunner().invoke(app, [*args, "--columns", "colour=who"])
    assert bad_map.exit_code == 2
    assert "COLUMN one of" in " ".join(re.sub("[│╭╮╰╯─]", " ", bad_map.output).split())
    missing = CliRunner().invoke(app, [*args, "--columns", "user=who,item=film"])
    assert missing.exit_code == 2
    assert "no column 'film' (mapped to 'item_id')" in missing.output
    assert not (tmp_path / "r.json").exists()
