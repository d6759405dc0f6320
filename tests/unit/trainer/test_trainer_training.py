from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from rich.console import Console

from reco_common.interactions import read_interactions
from reco_trainer import dataset, training
from reco_trainer.dataset import Vocab
from reco_trainer.defaults import DataFacts, resolve
from reco_trainer.evaluation import EvalSet, Scorer, factor_scorer
from reco_trainer.params import TrainParams, Weighting
from reco_trainer.progress import BarProgress, LogProgress
from reco_trainer.training import fit, representations


@pytest.fixture
def data(shop_files: dict[str, str]) -> dataset.LightfmInput:
    log = read_interactions(shop_files["interactions"])
    m = dataset.matrix(log, Vocab.of(log.user_ids()), Vocab.of(log.item_ids()))
    return dataset.lightfm_input(m, Weighting.LOG)


def _resolved(params: TrainParams) -> TrainParams:
    return resolve(params, DataFacts(fit_pairs=4_000, graded=True, cpus=1))


def _validation(data: dataset.LightfmInput) -> EvalSet:
    m = data.interactions.tocsr()
    return EvalSet.build(known=sp.csr_matrix(m.shape, dtype=np.float32), held_out=m)


def test_factors_rank_items_like_lightfm_predict(
    data: dataset.LightfmInput, tiny_params: TrainParams
) -> None:
    result = fit(
        data,
        params=_resolved(tiny_params),
        item_features=None,
        user_features=None,
        validation=None,
        progress=LogProgress(tiny_params.epochs),
    )
    users, items = representations(result.model, None, None)
    assert users.dtype == items.dtype == np.float32
    assert users.shape[1] == items.shape[1] == tiny_params.components + 1
    n_items = items.shape[0]
    for user in (0, 7):
        predicted = result.model.predict(np.full(n_items, user), np.arange(n_items))
        served = factor_scorer(users, items)(np.array([user]))[0]
        # LightFM adds the user's bias, a constant per user: the ranking is the same.
        np.testing.assert_allclose(served + users[user, -1], predicted, rtol=1e-4, atol=1e-4)
    assert result.epochs_run == result.best_epoch == tiny_params.epochs


def test_one_thread_trains_the_same_model_twice(data: dataset.LightfmInput) -> None:
    """What ``threads`` auto gives small data: the model is a function of data and params."""
    params = _resolved(TrainParams(components=4, epochs=3, threads=1))
    first, second = (
        fit(
            data,
            params=params,
            item_features=None,
            user_features=None,
            validation=None,
            progress=LogProgress(params.epochs),
        )
        for _ in range(2)
    )
    for a, b in zip(
        representations(first.model, None, None),
        representations(second.model, None, None),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_keeps_the_best_epoch(
    data: dataset.LightfmInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    script: Iterator[float] = iter([0.1, 0.3, 0.2, 0.25, 0.9, 0.9])
    seen: list[np.ndarray[Any, Any]] = []

    def scripted(score: Scorer, validation: EvalSet, **_: object) -> dict[str, float]:
        seen.append(score(np.arange(3)))
        return {"precision@10": next(script)}

    monkeypatch.setattr(training, "evaluate", scripted)
    params = _resolved(TrainParams(components=4, epochs=6, patience=2, min_epochs=1, threads=1))
    result = fit(
        data,
        params=params,
        item_features=None,
        user_features=None,
        validation=_validation(data),
        progress=LogProgress(params.epochs),
    )
    assert result.epochs_run == 4
    assert result.best_epoch == 2
    assert [e.metrics["precision@10"] for e in result.history] == [0.1, 0.3, 0.2, 0.25]
    users, items = representations(result.model, None, None)
    np.testing.assert_allclose(factor_scorer(users, items)(np.arange(3)), seen[1], rtol=1e-6)


def test_early_stopping_waits_for_the_minimum_epochs(
    data: dataset.LightfmInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    script: Iterator[float] = iter([0.5, 0.1, 0.1, 0.1, 0.1, 0.6, 0.1, 0.1, 0.1, 0.1])

    def scripted(score: Scorer, validation: EvalSet, **_: object) -> dict[str, float]:
        return {"precision@10": next(script)}

    monkeypatch.setattr(training, "evaluate", scripted)
    params = _resolved(TrainParams(components=4, epochs=10, patience=2, min_epochs=6, threads=1))
    result = fit(
        data,
        params=params,
        item_features=None,
        user_features=None,
        validation=_validation(data),
        progress=LogProgress(params.epochs),
    )
    # A dip right after epoch 1 would have stopped at epoch 3; the minimum carries it to the
    # late peak, and patience then stops two epochs after it.
    assert result.best_epoch == 6
    assert result.epochs_run == 8


def test_progress_lines_name_epoch_and_metric(
    data: dataset.LightfmInput, caplog: pytest.LogCaptureFixture
) -> None:
    params = _resolved(TrainParams(components=4, epochs=2, threads=1, validation_users=50))
    with caplog.at_level(logging.INFO, logger="reco_trainer.progress"):
        fit(
            data,
            params=params,
            item_features=None,
            user_features=None,
            validation=_validation(data),
            progress=LogProgress(params.epochs),
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "reco_trainer.progress"]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2 ")
    assert "precision@10=" in lines[1]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_divergence_is_reported(data: dataset.LightfmInput) -> None:
    params = _resolved(TrainParams(components=4, epochs=2, threads=1, learning_rate=1e30))
    with pytest.raises(ValueError, match="diverged"):
        fit(
            dataset.LightfmInput(data.interactions, data.weights * 1e30),
            params=params,
            item_features=None,
            user_features=None,
            validation=None,
            progress=LogProgress(params.epochs),
        )


def test_the_progress_bar_shows_epochs_and_the_metric() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with BarProgress(3, console) as bar:
        bar.epoch(1, 0.5, {"precision@10": 0.1234})
        bar.epoch(2, 0.5, {"precision@10": 0.2345})
    text = out.getvalue()
    assert "2/3" in text
    assert "precision@10=0.2345" in text


def test_members_side_by_side_score_the_mean_of_their_scores() -> None:
    """The mean keeps one model's score scale, which the worker's neighbour bonus is weighed
    against: three members must not make the bonus a third as strong."""
    rng = np.random.default_rng(0)
    members = [
        (
            rng.normal(size=(5, d + 1)).astype(np.float32),
            rng.normal(size=(7, d + 1)).astype(np.float32),
        )
        for d in (3, 4)
    ]
    users, items = training.side_by_side(members)
    assert users.shape == (5, 3 + 4 + 1)
    assert items.shape == (7, 3 + 4 + 1)
    rows = np.arange(5)
    mean = sum(factor_scorer(u, v)(rows) for u, v in members) / len(members)
    np.testing.assert_allclose(factor_scorer(users, items)(rows), mean, rtol=1e-5, atol=1e-5)
    assert training.side_by_side(members[:1]) == members[0]
