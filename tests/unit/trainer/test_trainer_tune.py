"""The parameter search: trial count, time budget, pruning, and reuse of what it found."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from reco_common.artifact_cache import load_artifact
from reco_common.interactions import read_interactions
from reco_common.settings import S3Settings
from reco_common.storage import open_store
from reco_trainer import dataset, pipeline, tune
from reco_trainer.cli import app
from reco_trainer.dataset import Vocab
from reco_trainer.defaults import DataFacts, resolve
from reco_trainer.evaluation import EvalSet
from reco_trainer.params import TrainParams
from reco_trainer.pipeline import Inputs, Job, run_job
from reco_trainer.progress import LogProgress
from reco_trainer.tune import Budget, search_parameters


@pytest.fixture
def fit_and_validation(shop_files: dict[str, str]) -> tuple[sp.csr_matrix, EvalSet]:
    log = read_interactions(shop_files["interactions"])
    parts = dataset.split_per_user(log, kind=dataset.SplitKind.RANDOM, fraction=0.2, seed=0)
    users, items = Vocab.of(log.user_ids()), Vocab.of(log.item_ids())
    fit = dataset.matrix(parts.train, users, items)
    held = dataset.matrix(parts.held_out, users, items)
    return fit, EvalSet.build(known=fit, held_out=held)


def _search(
    data: tuple[sp.csr_matrix, EvalSet], budget: Budget, clock: Any = None, **params: Any
) -> tune.Search:
    fit, validation = data
    return search_parameters(
        fit,
        validation,
        params=resolve(
            TrainParams(**{"epochs": 3, "min_epochs": 1, "threads": 1, **params}),
            DataFacts(fit_pairs=fit.nnz, graded=True, cpus=1),
        ),
        budget=budget,
        item_features=None,
        user_features=None,
        progress=LogProgress,
        **({"clock": clock} if clock else {}),
    )


def test_the_search_stops_at_its_trial_count_and_keeps_the_best(
    fit_and_validation: tuple[sp.csr_matrix, EvalSet],
) -> None:
    search = _search(fit_and_validation, Budget(trials=3, budget_s=3600))
    assert len(search.trials) == 3
    complete = [t for t in search.trials if t.state == "complete"]
    assert complete
    assert search.best_value == max(t.value for t in complete if t.value is not None)
    assert set(search.best) == set(tune.TUNED)
    best = next(t for t in complete if t.value == search.best_value)
    assert best.params == search.best
    assert search.to_dict()["trials"][0]["params"] == search.trials[0].params


def test_the_search_stops_at_its_time_budget(
    fit_and_validation: tuple[sp.csr_matrix, EvalSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]

    def four_seconds_an_epoch(*_: object, **__: object) -> dict[str, float]:
        now[0] += 4.0
        return {"precision@10": 0.5}

    monkeypatch.setattr("reco_trainer.training.evaluate", four_seconds_an_epoch)
    search = _search(
        fit_and_validation, Budget(trials=100, budget_s=10), clock=lambda: now[0], epochs=5
    )
    # Epochs end at 4, 8 and 12 s: the third is past the deadline, the trial is abandoned
    # there and no other trial starts.
    assert [(t.state, t.epochs_run) for t in search.trials] == [("pruned", 3)]
    assert search.seconds == 12.0
    assert search.best_value is None
    assert search.best == {}


def test_a_trial_below_the_median_is_pruned(
    fit_and_validation: tuple[sp.csr_matrix, EvalSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    values: Iterator[float] = iter([0.5] * 8 + [0.01] * 4)

    def scripted(*_: object, **__: object) -> dict[str, float]:
        return {"precision@10": next(values)}

    monkeypatch.setattr("reco_trainer.training.evaluate", scripted)
    search = _search(fit_and_validation, Budget(trials=5, budget_s=3600), epochs=2)
    assert [t.state for t in search.trials] == ["complete"] * 4 + ["pruned"]


def test_tuned_parameters_go_into_the_manifest_and_are_reused(
    shop_files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = (tmp_path / "store").as_uri()
    params = TrainParams(epochs=2, min_epochs=1, threads=1)
    outcome = run_job(
        Job(
            model_name="shop",
            store_uri=store,
            params=params,
            s3=S3Settings(),
            kafka=None,
            progress=LogProgress,
            tune=Budget(trials=2, budget_s=3600, members=2),
        ),
        Inputs(interactions=[shop_files["interactions"]]),
    )
    manifest = load_artifact(open_store(outcome.artifact_uri), cache_dir=tmp_path / "c").manifest
    assert manifest.params["tuning"]["trials"] == 2
    found = tune.tuned_values(manifest.params)
    assert set(found) == set(tune.REUSED)
    assert found["members"] == 2
    report = json.loads(open_store(outcome.artifact_uri).get_bytes("evaluation.json"))
    assert len(report["search"]["trials"]) == 2
    assert report["search"]["best"] == {k: found[k] for k in tune.TUNED}
    assert report["search"]["members"] == 2
    monkeypatch.setenv("RECO_TRAINER_PARAMS__EPOCHS", "1")
    monkeypatch.setenv("RECO_TRAINER_PARAMS__THREADS", "1")
    result = CliRunner().invoke(
        app,
        [
            "train",
            "-i",
            shop_files["interactions"],
            "--output",
            store,
            "--no-publish",
            "--params-from",
            outcome.artifact_uri,
            "--metrics-out",
            str(tmp_path / "again.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "again.json").read_text())
    assert {k: again["params"][k] for k in tune.REUSED} == found
    assert "search" not in again


def test_the_tune_command_runs_a_bounded_search(
    shop_files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECO_TRAINER_PARAMS__EPOCHS", "2")
    monkeypatch.setenv("RECO_TRAINER_PARAMS__MIN_EPOCHS", "1")
    out = tmp_path / "tuned.json"
    result = CliRunner().invoke(
        app,
        [
            "tune",
            "-i",
            shop_files["interactions"],
            "--trials",
            "2",
            "--minutes",
            "5",
            "--output",
            (tmp_path / "store").as_uri(),
            "--no-publish",
            "--threads",
            "1",
            "--metrics-out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["search"]["max_trials"] == 2
    assert len(report["search"]["trials"]) <= 2
    assert np.isfinite(report["model"]["precision@10"])


def test_the_first_trial_is_the_jobs_own_parameters(
    fit_and_validation: tuple[sp.csr_matrix, EvalSet],
) -> None:
    search = _search(fit_and_validation, Budget(trials=1, budget_s=3600), components=24)
    (first,) = search.trials
    assert first.params["components"] == 24
    assert first.params["loss"] == "warp"  # what auto resolves to on the shop's actions


def test_the_best_trial_is_not_trained_again(
    shop_files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int | None] = []
    real_fit = pipeline.fit

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("epochs"))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(pipeline, "fit", counted)
    outcome = run_job(
        Job(
            model_name="shop",
            store_uri=(tmp_path / "store").as_uri(),
            params=TrainParams(epochs=3, min_epochs=1, threads=1),
            s3=S3Settings(),
            kafka=None,
            progress=LogProgress,
            tune=Budget(trials=1, budget_s=3600, members=2),
        ),
        Inputs(interactions=[shop_files["interactions"]]),
    )
    # Only the fold-in runs of the two members, for the kept epochs: no early-stopped run.
    assert len(calls) == 2
    assert all(epochs is not None for epochs in calls)
    assert outcome.report is not None
    assert outcome.report.search is not None
    assert outcome.report.search["reserved_s"] > 0
