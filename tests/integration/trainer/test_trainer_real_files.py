"""Real files as they come, through the real commands: a MovieLens slice read with a column map
by ``reco-trainer train`` and ``reco-worker replay``, and a log with action names of its own
weighed with ``--action-weight``; the model goes to the stack's S3 server."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reco_common.contracts import ObjectLayout
from reco_common.storage import ObjectStore

MOVIELENS = Path(__file__).parents[2] / "data" / "movielens" / "ratings-slice.csv"
COLUMNS = "user=userId,item=movieId,weight=rating,timestamp=timestamp"
# Each command is a fresh interpreter importing LightFM, pyarrow and boto3: ~10 s alone, over a
# minute on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(420)
TINY = ["--components", "8", "--epochs", "3", "--min-epochs", "1", "--threads", "1"]


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**os.environ, "RECO_TRAINER_MODEL_NAME": "films"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _manifests(store: ObjectStore) -> list[dict[str, object]]:
    keys = [k for k in store.list(ObjectLayout.MODELS) if k.endswith(ObjectLayout.MANIFEST)]
    return [json.loads(store.get_bytes(k)) for k in keys]


def test_a_ratings_file_trains_and_replays_with_one_column_map(
    s3_root: str, s3_store: ObjectStore, tmp_path: Path
) -> None:
    trained = _run(
        "reco_trainer",
        "train",
        *("-i", str(MOVIELENS), "--columns", COLUMNS, "--min-weight", "4"),
        *("--split", "random", "--output", s3_root, "--no-publish", *TINY),
    )
    assert trained.returncode == 0, trained.stderr
    (manifest,) = _manifests(s3_store)
    assert manifest["params"]["reading"] == {  # type: ignore[index]
        "columns": {
            "user_id": "userId",
            "item_id": "movieId",
            "weight": "rating",
            "ts": "timestamp",
        },
        "min_weight": 4.0,
    }
    model = s3_store.uri(ObjectLayout.model_dir("films", str(manifest["version"])))
    report = tmp_path / "replay.json"
    replayed = _run(
        "reco_worker",
        "replay",
        *("--model", model, "--events", str(MOVIELENS), "--output", str(report)),
        *("--columns", COLUMNS, "--min-weight", "4", "--k", "10"),
    )
    assert replayed.returncode == 0, replayed.stderr
    with MOVIELENS.open() as fh:
        positives = [r for r in csv.DictReader(fh) if float(r["rating"]) >= 4]
    found = json.loads(report.read_text())
    assert found["events"] == len(positives)
    assert "lift realtime/static" in replayed.stdout
    unmapped = _run(
        "reco_worker",
        "replay",
        *("--model", model, "--events", str(MOVIELENS), "--output", str(tmp_path / "x.json")),
    )
    assert unmapped.returncode == 2
    assert "ratings-slice.csv: line 1: no header naming" in unmapped.stderr


def test_a_log_with_its_own_action_names_trains_with_their_weights(
    s3_root: str, s3_store: ObjectStore, tmp_path: Path
) -> None:
    log = tmp_path / "plays.csv"
    with MOVIELENS.open() as fh:
        rows = list(csv.DictReader(fh))
    lines = [
        f"{r['userId']},{r['movieId']},{'like' if float(r['rating']) >= 4 else 'play'},{r['timestamp']}"
        for r in rows
    ]
    log.write_text("userId,movieId,kind,timestamp\n" + "\n".join(lines) + "\n")
    args = ["train", "-i", str(log), "--columns", "user=userId,item=movieId,action=kind"]
    args += ["--split", "random", "--output", s3_root, "--no-publish", *TINY]
    missing = _run("reco_trainer", *args, "--action-weight", "like=3")
    assert missing.returncode == 2
    first_play = next(n for n, r in enumerate(rows) if float(r["rating"]) < 4) + 2
    assert f"plays.csv: line {first_play}" in missing.stderr
    assert "unknown action 'play'" in missing.stderr
    assert _manifests(s3_store) == []
    weighed = _run("reco_trainer", *args, "--action-weight", "like=3", "--action-weight", "play=1")
    assert weighed.returncode == 0, weighed.stderr
    (manifest,) = _manifests(s3_store)
    weights = manifest["params"]["action_weights"]  # type: ignore[index]
    assert (weights["like"], weights["play"]) == (3.0, 1.0)
