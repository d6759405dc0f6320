from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from reco_common.contracts import ObjectLayout
from reco_common.storage import open_store
from reco_trainer.cli import EXIT_INPUT, app
from reco_trainer.options import OWN_FLAGS
from reco_trainer.params import TrainParams

runner = CliRunner()


def said(output: str) -> str:
    """The output's words, without the frame and line breaks of typer's error box."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())


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
    result = runner.invoke(app, [*args, "--action-weight", "purchase=0"])
    assert result.exit_code == EXIT_INPUT
    assert "purchase=0: the weight must be a positive number" in said(result.output)
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


MOVIELENS = str(Path(__file__).parents[2] / "data" / "movielens" / "ratings-slice.csv")
MOVIELENS_COLUMNS = "user=userId,item=movieId,weight=rating,timestamp=timestamp"


def test_train_reads_a_real_dataset_with_columns_and_a_threshold(
    store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["train", "-i", MOVIELENS, "--output", store_uri, "--split", "random", *TINY]
    flags = runner.invoke(app, [*args, "--columns", MOVIELENS_COLUMNS, "--min-weight", "4"])
    assert flags.exit_code == 0, flags.output
    (manifest,) = [k for k in open_store(store_uri).list() if k.endswith("manifest.json")]
    doc = json.loads(open_store(store_uri).get_bytes(manifest))
    assert doc["params"]["reading"]["min_weight"] == 4
    assert doc["params"]["reading"]["columns"]["user_id"] == "userId"
    monkeypatch.setenv("RECO_TRAINER_COLUMNS", MOVIELENS_COLUMNS)
    monkeypatch.setenv("RECO_TRAINER_MIN_WEIGHT", "4")
    settings = runner.invoke(app, args)
    assert settings.exit_code == 0, settings.output
    assert "already existed" in settings.stdout  # the same data read the same way
    everything = runner.invoke(app, [*args, "--min-weight", "0.5"])
    assert everything.exit_code == 0, everything.output
    assert len([k for k in open_store(store_uri).list() if k.endswith("manifest.json")]) == 2


def test_bad_column_maps_exit_non_zero_naming_the_column(
    store_uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["train", "-i", MOVIELENS, "--output", store_uri, *TINY]
    result = runner.invoke(app, [*args, "--columns", "user=userId,item=film"])
    assert result.exit_code == EXIT_INPUT
    assert "no column 'film' (mapped to 'item_id')" in result.output + caplog.text
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_INPUT
    assert "ratings-slice.csv: line 1: no header naming" in result.output + caplog.text
    monkeypatch.setenv("RECO_TRAINER_COLUMNS", "colour=red")
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_INPUT
    assert "RECO_TRAINER_COLUMNS" in result.output + caplog.text
    assert open_store(store_uri).list() == []


def test_every_training_parameter_has_its_option() -> None:
    group: Any = typer.main.get_command(app)
    for command in ("train", "tune"):
        options = {p.name: p for p in group.commands[command].params}
        for name, field in TrainParams.model_fields.items():
            if name not in OWN_FLAGS:
                assert options[name].help == field.description, (command, name)
    train = {p.name: p for p in group.commands["train"].params}
    assert train["ks"].opts == ["--k"]
    assert train["refit"].opts == ["--refit"]
    assert train["refit"].secondary_opts == ["--no-refit"]


def _action_log(path: Path) -> str:
    """A log with the action names of a video site (none of the shop's)."""
    rows = [
        f"u{u},v{(u * 7 + n) % 23},{('play', 'like', 'share')[n % 3]},{1_700_000_000 + 60 * n}"
        for u in range(30)
        for n in range(12)
    ]
    path.write_text("user_id,item_id,action,timestamp\n" + "\n".join(rows) + "\n")
    return str(path)


def test_any_action_name_gets_its_weight(store_uri: str, tmp_path: Path) -> None:
    log = _action_log(tmp_path / "actions.csv")
    metrics = tmp_path / "m.json"
    args = ["train", "-i", log, "--output", store_uri, "--metrics-out", str(metrics), *TINY]
    weights = [
        "--action-weight",
        "play=1",
        "--action-weight",
        "like=3",
        "--action-weight",
        "share=5",
    ]
    result = runner.invoke(app, [*args, *weights])
    assert result.exit_code == 0, result.output
    params = json.loads(metrics.read_text())["params"]
    assert params["action_weights"] == {
        "view": 1.0,
        "click": 2.0,
        "cart": 4.0,
        "purchase": 8.0,
        "play": 1.0,
        "like": 3.0,
        "share": 5.0,
    }


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("share", "'share': expected ACTION=WEIGHT"),
        ("share=much", "share=much: the weight is not a number"),
        ("share=-2", "share=-2: the weight must be a positive number"),
        ("=2", "the action name is empty"),
    ],
)
def test_malformed_action_weights_exit_before_reading(
    store_uri: str, tmp_path: Path, flag: str, message: str
) -> None:
    args = ["train", "-i", str(tmp_path / "absent.csv"), "--output", store_uri, *TINY]
    result = runner.invoke(app, [*args, "--action-weight", flag])
    assert result.exit_code == EXIT_INPUT
    assert message in said(result.output)
    assert "--action-weight" in said(result.output)


def test_an_action_without_a_weight_is_named_with_its_line(
    store_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = _action_log(tmp_path / "actions.csv")
    args = ["train", "-i", log, "--output", store_uri, *TINY]
    result = runner.invoke(app, [*args, "--action-weight", "play=1", "--action-weight", "like=3"])
    assert result.exit_code == EXIT_INPUT
    assert "actions.csv: line 4" in result.output + caplog.text
    assert "unknown action 'share'" in result.output + caplog.text
    assert open_store(store_uri).list() == []
