"""Fitting LightFM epoch by epoch with early stopping, and extracting its representations.

After each epoch the model is scored on the validation part (each user's held-out share, at
most ``validation_users`` users); the best epoch's weights are kept, and training stops after
``patience`` epochs without improvement, never before ``min_epochs``: on real data the
validation metric is noisy early on, and a short patience stops on a dip (docs/quality.md). The factors are read with ``get_*_representations`` (features folded in), as
float32 ``[n, d + 1]`` with the bias as the last column: the artifact's serving format.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from lightfm import LightFM

from reco_trainer.dataset import LightfmInput
from reco_trainer.evaluation import EvalSet, evaluate, factor_scorer
from reco_trainer.params import Loss, TrainParams, Weighting
from reco_trainer.progress import EpochProgress

logger = logging.getLogger(__name__)

_UNRESOLVED = (
    "{name} is left to the data: resolve the parameters first (reco_trainer.defaults.resolve)"
)
_STATE = ("item_embeddings", "item_biases", "user_embeddings", "user_biases")
Factors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Epoch:
    number: int
    seconds: float
    metrics: dict[str, float]


@dataclass(slots=True)
class FitResult:
    model: LightFM
    epochs_run: int
    best_epoch: int
    history: list[Epoch] = field(default_factory=list)


def new_model(params: TrainParams) -> LightFM:
    if params.loss is Loss.AUTO:
        raise ValueError(_UNRESOLVED.format(name="loss"))
    return LightFM(
        no_components=params.components,
        loss=params.loss.value,
        learning_rate=params.learning_rate,
        item_alpha=params.item_alpha,
        user_alpha=params.user_alpha,
        max_sampled=params.max_sampled,
        random_state=params.seed,
    )


def fit(
    data: LightfmInput,
    *,
    params: TrainParams,
    item_features: sp.csr_matrix | None,
    user_features: sp.csr_matrix | None,
    validation: EvalSet | None,
    progress: EpochProgress,
    epochs: int | None = None,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> FitResult:
    """Train for ``epochs`` (default ``params.epochs``), stopping early on ``validation``.

    ``on_epoch`` sees each epoch as it ends (the tuner reports it to Optuna and may raise to
    abandon the trial). LightFM itself raises ``ValueError`` when the weights stop being finite
    (divergence).
    """
    threads = required(params.threads, "threads")
    min_epochs = required(params.min_epochs, "min_epochs")
    patience = required(params.patience, "patience")
    model = new_model(params)
    if params.loss is Loss.WARP_KOS and params.weighting is not Weighting.BINARY:
        logger.warning("warp-kos takes no sample weights: every interaction weighs the same")
    total = epochs or params.epochs
    result = FitResult(model=model, epochs_run=0, best_epoch=0)
    best_value, best_state = -np.inf, None
    with progress:
        for number in range(1, total + 1):
            started = time.perf_counter()
            model.fit_partial(
                data.interactions,
                user_features=user_features,
                item_features=item_features,
                sample_weight=None if params.loss is Loss.WARP_KOS else data.weights,
                epochs=1,
                num_threads=threads,
            )
            metrics = {}
            if validation is not None:
                users, items = representations(model, item_features, user_features)
                metrics = evaluate(
                    factor_scorer(users, items),
                    validation,
                    ks=params.ks,
                    auc=params.early_stopping_metric == "auc",
                )
            seconds = time.perf_counter() - started
            result.history.append(Epoch(number, seconds, metrics))
            result.epochs_run = number
            if on_epoch is not None:
                on_epoch(result.history[-1])
            progress.epoch(number, seconds, _shown(metrics, params.early_stopping_metric))
            if validation is None:
                result.best_epoch = number
                continue
            value = metrics[params.early_stopping_metric]
            if value > best_value:
                best_value, best_state, result.best_epoch = value, _snapshot(model), number
            elif number >= min_epochs and number - result.best_epoch >= patience:
                logger.info(
                    "early stop after epoch %d: %s peaked at %.4f in epoch %d",
                    number,
                    params.early_stopping_metric,
                    best_value,
                    result.best_epoch,
                )
                break
    if best_state is not None:
        _restore(model, best_state)
    return result


def required(value: int | None, name: str) -> int:
    """``value`` of a parameter left to the data, once :func:`reco_trainer.defaults.resolve`
    has set it."""
    if value is None:
        raise ValueError(_UNRESOLVED.format(name=name))
    return value


def _shown(metrics: dict[str, float], key: str) -> dict[str, float]:
    return {key: metrics[key]} if key in metrics else {}


def _snapshot(model: LightFM) -> dict[str, npt.NDArray[np.float32]]:
    return {name: getattr(model, name).copy() for name in _STATE}


def _restore(model: LightFM, state: dict[str, npt.NDArray[np.float32]]) -> None:
    for name, value in state.items():
        getattr(model, name)[...] = value


BIAS_SCALES = (1.0, 1.5, 2.0, 3.0)


def choose_bias_scale(
    model: LightFM,
    validation: EvalSet,
    *,
    params: TrainParams,
    item_features: sp.csr_matrix | None,
    user_features: sp.csr_matrix | None,
) -> float:
    """The weight of the item bias (popularity, as LightFM learnt it) against the personal
    part of the score that ranks the validation part best. On MovieLens LightFM's ranking
    gains from leaning further on popularity than it learns to (docs/quality.md)."""
    users, items = representations(model, item_features, user_features)
    metric = params.early_stopping_metric
    found: dict[float, float] = {}
    for scale in BIAS_SCALES:
        scaled = with_bias_scale(items, scale)
        found[scale] = evaluate(factor_scorer(users, scaled), validation, ks=params.ks, auc=False)[
            metric
        ]
    best = max(found, key=lambda s: (found[s], -s))
    logger.info("item bias scale %.1f (validation %s: %s)", best, metric, found)
    return best


def with_bias_scale(items: Factors, scale: float) -> Factors:
    """``items`` with the bias column multiplied by ``scale``."""
    out = items.copy()
    out[:, -1] *= scale
    return out


def side_by_side(members: list[tuple[Factors, Factors]]) -> tuple[Factors, Factors]:
    """One model's ``(users, items)`` factors from several: embeddings side by side, each
    divided by the square root of the number of members, item biases averaged, so that
    ``[u, 1] · [v, b]`` is the mean of the members' scores. One model's scale, not the sum's:
    embeddings keep one model's norms and scores one model's range, which the real-time
    policy's neighbour bonus is weighed against (docs/quality.md)."""
    if len(members) == 1:
        return members[0]
    root = np.sqrt(len(members))
    users = np.hstack([u[:, :-1] / root for u, _ in members] + [members[0][0][:, -1:]])
    items = np.hstack(
        [v[:, :-1] / root for _, v in members] + [sum(v[:, -1:] for _, v in members) / len(members)]
    )
    return users.astype(np.float32), items.astype(np.float32)


def representations(
    model: LightFM, item_features: sp.csr_matrix | None, user_features: sp.csr_matrix | None
) -> tuple[Factors, Factors]:
    """User and item factors as float32 ``[n, d + 1]``, bias last."""
    user_bias, user_emb = model.get_user_representations(user_features)
    item_bias, item_emb = model.get_item_representations(item_features)
    return _with_bias(user_emb, user_bias), _with_bias(item_emb, item_bias)


def _with_bias(embeddings: npt.NDArray[np.float32], biases: npt.NDArray[np.float32]) -> Factors:
    out = np.empty((embeddings.shape[0], embeddings.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = embeddings
    out[:, -1] = biases
    return out
