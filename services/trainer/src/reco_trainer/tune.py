"""A budgeted hyper-parameter search with Optuna (``reco-trainer tune``, ``run --tune N``).

The job's own parameters are the first trial. Each trial trains with the job's own early
stopping on the job's own validation part (a random share of every user's interactions, all
users up to ``validation_users``) and reports the validation metric after every epoch; Optuna's
median pruner abandons a trial that runs below the median of the earlier trials at the same
epoch, from epoch :data:`WARMUP_EPOCHS` on. The best trial's values (:data:`TUNED`) replace the
job's parameters, and the final model is an ensemble of ``Budget.members`` models with them
(seeds seed, seed+1, …; ``TrainParams.members``): on MovieLens averaging seeds lifted test
precision more than any point of the space did (docs/quality.md). The manifest records the
values (``tuning``) so that later runs can reuse them (``--params-from``).

``budget_s`` covers the search and the final training: once the first trial has run, its
timing estimates the final training (each member's run on the fit and validation parts; the
best trial's model is kept, not trained again) and the search stops early enough to leave that
time: under load that can be after the first trial, and the final training still trains every
member, so a loaded machine overruns the budget. The search also
ends after ``trials`` trials; a trial still running at the deadline is abandoned at the end of
its epoch, so the search overruns its share by one epoch at most.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import scipy.sparse as sp

from reco_trainer import dataset
from reco_trainer.evaluation import EvalSet
from reco_trainer.params import Loss, TrainParams, Weighting
from reco_trainer.progress import EpochProgress
from reco_trainer.training import Epoch, FitResult, fit

logger = logging.getLogger(__name__)

TUNED = (
    "loss",
    "components",
    "learning_rate",
    "item_alpha",
    "user_alpha",
    "max_sampled",
    "weighting",
)
"""The parameters a search chooses."""
REUSED = (*TUNED, "members")
"""What ``--params-from`` carries over from a tuned manifest."""
WARMUP_EPOCHS = 10
"""Epochs before a trial may be pruned: bad learning rates and sizes show by then on
MovieLens, and the first epochs of good ones are still noisy."""
FOLD_SHARE = 1.25
"""The fit + validation parts against the fit part alone (a validation share of 20 %)."""


@dataclass(frozen=True, slots=True)
class Budget:
    trials: int
    budget_s: float
    members: int = 3


@dataclass(frozen=True, slots=True)
class TrialRecord:
    number: int
    state: str
    value: float | None
    best_epoch: int | None
    epochs_run: int
    seconds: float
    params: dict[str, Any]


@dataclass(slots=True)
class Search:
    """What the search tried and what it kept (shown in the report, kept in the manifest)."""

    metric: str
    budget: Budget
    best: dict[str, Any] = field(default_factory=dict)
    best_value: float | None = None
    trials: list[TrialRecord] = field(default_factory=list)
    seconds: float = 0.0
    reserved_s: float = 0.0  # left for the final training
    best_fit: FitResult | None = None  # the best trial's model: the final training's first

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "max_trials": self.budget.trials,
            "budget_s": self.budget.budget_s,
            "seconds": round(self.seconds, 3),
            "reserved_s": round(self.reserved_s, 3),
            "members": self.budget.members,
            "best": self.best,
            "best_value": self.best_value,
            "trials": [{**asdict(t), "seconds": round(t.seconds, 3)} for t in self.trials],
        }


def suggest(trial: optuna.Trial | optuna.trial.FixedTrial) -> dict[str, Any]:
    """One point of the search space (ranges chosen on MovieLens, docs/quality.md)."""
    loss = trial.suggest_categorical("loss", [Loss.WARP_KOS.value, Loss.WARP.value])
    weightings = [Weighting.BINARY.value]  # warp-kos takes no sample weights
    if loss == Loss.WARP.value:
        weightings.append(Weighting.LOG.value)
    return {
        "loss": loss,
        "components": trial.suggest_int("components", 16, 192, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.005, 0.1, log=True),
        "item_alpha": trial.suggest_float("item_alpha", 1e-10, 1e-5, log=True),
        "user_alpha": trial.suggest_float("user_alpha", 1e-10, 1e-5, log=True),
        "max_sampled": trial.suggest_int("max_sampled", 5, 40, log=True),
        "weighting": trial.suggest_categorical(f"weighting_{loss}", weightings),
    }


def search_parameters(
    fit_matrix: sp.csr_matrix,
    validation: EvalSet,
    *,
    params: TrainParams,
    budget: Budget,
    item_features: sp.csr_matrix | None,
    user_features: sp.csr_matrix | None,
    progress: Callable[[int], EpochProgress],
    clock: Callable[[], float] = time.monotonic,
) -> Search:
    """Search :func:`suggest`'s space within ``budget`` (see the module docstring)."""
    started = clock()
    deadline = [started + budget.budget_s]
    result = Search(metric=params.early_stopping_metric, budget=budget)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=params.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=2,
            n_warmup_steps=min(params.min_epochs or WARMUP_EPOCHS, WARMUP_EPOCHS),
        ),
    )

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial)
        trial_params = params.updated(values)
        trial_started = clock()
        epochs: list[Epoch] = []

        def report(epoch: Epoch) -> None:
            epochs.append(epoch)
            trial.report(epoch.metrics[params.early_stopping_metric], epoch.number)
            if clock() > deadline[0] or trial.should_prune():
                raise optuna.TrialPruned

        def record(state: str, value: float | None = None, best: int | None = None) -> None:
            seconds = clock() - trial_started
            result.trials.append(
                TrialRecord(trial.number, state, value, best, len(epochs), seconds, values)
            )

        try:
            fitted = fit(
                dataset.lightfm_input(fit_matrix, trial_params.weighting),
                params=trial_params,
                item_features=item_features,
                user_features=user_features,
                validation=validation,
                progress=progress(params.epochs),
                on_epoch=report,
            )
        except optuna.TrialPruned:
            record("pruned")
            raise
        except ValueError:
            record("failed")
            raise
        best = max(e.metrics[params.early_stopping_metric] for e in fitted.history)
        record("complete", best, fitted.best_epoch)
        if result.best_value is None or best > result.best_value:
            result.best_value, result.best_fit = best, fitted
        if not result.reserved_s:
            result.reserved_s = final_training_s(result.trials[-1], budget.members)
            deadline[0] = min(deadline[0], started + budget.budget_s - result.reserved_s)
            logger.info("search: %.0f s kept for the final training", result.reserved_s)
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.enqueue_trial(starting_point(params))
    study.optimize(
        objective,
        n_trials=budget.trials,
        timeout=budget.budget_s,
        callbacks=[_stop_at(deadline, clock)],
        catch=(ValueError,),  # a diverging trial (LightFM raises) is one failed trial
    )
    result.seconds = clock() - started
    completed = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    if completed:
        result.best = suggest(optuna.trial.FixedTrial(study.best_trial.params))
        result.best_value = study.best_value
    else:
        result.best_fit = None
    logger.info(
        "search: %d trials (%d complete) in %.1f s, best %s=%s with %s",
        len(result.trials),
        len(completed),
        result.seconds,
        result.metric,
        result.best_value,
        result.best,
    )
    return result


def starting_point(params: TrainParams) -> dict[str, Any]:
    """The job's own parameters as the first trial (clipped into the space), so that the
    search keeps them unless it finds better."""
    loss = params.loss if params.loss in (Loss.WARP, Loss.WARP_KOS) else Loss.WARP_KOS
    weighting = Weighting.BINARY
    if loss is Loss.WARP and params.weighting is not Weighting.LINEAR:
        weighting = params.weighting
    return {
        "loss": loss.value,
        "components": min(max(params.components, 16), 192),
        "learning_rate": min(max(params.learning_rate, 0.005), 0.1),
        "item_alpha": min(max(params.item_alpha, 1e-10), 1e-5),
        "user_alpha": min(max(params.user_alpha, 1e-10), 1e-5),
        "max_sampled": min(max(params.max_sampled, 5), 40),
        f"weighting_{loss.value}": weighting.value,
    }


def final_training_s(trial: TrialRecord, members: int) -> float:
    """The final training's time as ``trial`` predicts it: each member for the kept epochs on
    the fit and validation parts (the best trial's own model is not trained again)."""
    per_epoch = trial.seconds / max(trial.epochs_run, 1)
    kept = trial.best_epoch or trial.epochs_run
    return members * kept * per_epoch * FOLD_SHARE


def _stop_at(
    deadline: list[float], clock: Callable[[], float]
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if clock() > deadline[0]:
            study.stop()

    return callback


def tuned_values(params: dict[str, Any]) -> dict[str, Any]:
    """The :data:`REUSED` entries of a manifest's ``params`` (for ``--params-from``)."""
    return {key: params[key] for key in REUSED if key in params}
