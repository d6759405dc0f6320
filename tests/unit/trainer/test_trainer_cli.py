from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reco_common.contracts import ObjectLayout
from reco_common.storage import open_store
from reco_trainer.cli import EXIT_INPUT, app

runner = CliRunner()
TINY = ["--components", "4", "--epochs", "2", "--threads", "1", "--no-publish"]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The commands configure the root logger; give the next tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECO_TRAINER_PUBLISH", "true")  # the flag must win
    monkeypatch.setenv("RECO_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # would fail if Kafka were used


def test_train_on_files_prints_both_recommenders(
    shop_files: dict[str, str], store_uri: str, tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics.json"
    result = runner.invoke(
        app,
        [
            "train",
            "-i",
            shop_files["interactions"],
            "--output",
            store_uri,
            "--model-name",
            "exp-1",
            "--metrics-out",
            str(metrics),
            "--action-weight",
            "purchase=20",
            "--k",
            "3",
            "--k",
            "10",
            *TINY,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "LightFM" in result.stdout
    assert "popularity" in result.stdout
    doc = json.loads(metrics.read_text())
    assert set(doc["model"]) == set(doc["baseline"])
    assert "precision@3" in doc["model"]
    assert doc["params"]["action_weights"]["purchase"] == 20.0
    assert [
        k for k in open_store(store_uri).list("models/exp-1/") if k.endswith(ObjectLayout.MANIFEST)
    ]


def test_params_from_the_environment(
    shop_files: dict[str, str], store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECO_TRAINER_PARAMS__LOSS", "bpr")
    metrics = tmp_path / "m.json"
    args = ["train", "-i", shop_files["interactions"], "--output", store_uri]
    result = runner.invoke(app, [*args, "--metrics-out", str(metrics), *TINY])
    assert result.exit_code == 0, result.output
    assert json.loads(metrics.read_text())["params"]["loss"] == "bpr"


def test_malformed_input_exits_non_zero_naming_the_line(tmp_path: Path, store_uri: str) -> None:
    bad = tmp_path / "log.tsv"
    bad.write_text("user_id\titem_id\ttimestamp\nu1\ti1\t5\nu2\ti2\tyesterday\n")
    result = runner.invoke(app, ["train", "-i", str(bad), "--output", store_uri, *TINY])
    assert result.exit_code == EXIT_INPUT
    assert "log.tsv: line 3, column 'ts'" in result.output
    assert open_store(store_uri).list() == []


def test_invalid_parameters_and_settings_exit_non_zero(
    shop_files: dict[str, str], store_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["train", "-i", shop_files["interactions"], "--output", store_uri, *TINY]
    result = runner.invoke(app, [*args, "--test-fraction", "1.5"])
    assert result.exit_code == EXIT_INPUT
    assert "test_fraction" in result.output
    result = runner.invoke(app, [*args, "--action-weight", "wishlist=3"])
    assert result.exit_code == EXIT_INPUT
    monkeypatch.setenv("RECO_TRAINER_MODEL_NAME", "Not A Name")
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_INPUT
    assert "RECO_TRAINER_MODEL_NAME" in result.output


def test_missing_input_exits_non_zero(tmp_path: Path, store_uri: str) -> None:
    result = runner.invoke(
        app, ["train", "-i", str(tmp_path / "nope.csv"), "--output", store_uri, *TINY]
    )
    assert result.exit_code == EXIT_INPUT
    assert "nope.csv" in result.output


def test_synth_writes_files(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["synth", "--output", str(tmp_path), "--interactions", "2000", "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "interactions.jsonl").stat().st_size > 0
    assert (tmp_path / "items.jsonl").stat().st_size > 0
    assert runner.invoke(app, ["synth"]).exit_code == EXIT_INPUT
