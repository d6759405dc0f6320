"""Training parameters: LightFM hyper-parameters, action weights, split and early stopping.

One frozen model used by the CLI flags and by ``RECO_TRAINER_PARAMS__*``; everything in it
except ``threads`` names the model (see :mod:`reco_trainer.versioning`).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from reco_common.contracts import DEFAULT_ACTION_WEIGHTS, PRIMARY_METRIC
from reco_common.interactions import action_weight_map

Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Loss(enum.StrEnum):
    """``auto``: warp when the log's actions weigh differently, else warp-kos
    (:mod:`reco_trainer.defaults`)."""

    AUTO = "auto"
    WARP = "warp"
    BPR = "bpr"
    WARP_KOS = "warp-kos"
    LOGISTIC = "logistic"


class SplitKind(enum.StrEnum):
    """``auto`` is temporal when every interaction has a timestamp, else random."""

    AUTO = "auto"
    TEMPORAL = "temporal"
    RANDOM = "random"


class Weighting(enum.StrEnum):
    """How a user-item pair's summed action weights become LightFM's sample weight."""

    AUTO = "auto"  # log for graded actions under a loss that takes weights, else binary

    LOG = "log"  # log1p(sum): a purchase counts more than a view, repeats saturate
    LINEAR = "linear"  # the sum itself
    BINARY = "binary"  # every pair weighs 1 (e.g. ratings filtered by --min-weight)


class TrainParams(BaseModel):
    """Each field's docstring is its ``reco-trainer train --<name>`` help (see cli.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    # Defaults measured on MovieLens against LightFM's own and on the synthetic shop
    # (docs/quality.md); those left to the data are resolved by reco_trainer.defaults.
    loss: Loss = Loss.AUTO
    """LightFM loss (auto: warp when the log's actions weigh differently, else warp-kos)."""
    components: Annotated[int, Field(ge=1, le=512)] = 96
    """Latent dimensions."""
    epochs: Annotated[int, Field(ge=1, le=1000)] = 150
    """Maximum epochs."""
    learning_rate: Positive = 0.02
    """Learning rate."""
    item_alpha: Annotated[float, Field(ge=0)] = 0.0
    """L2 penalty on item features."""
    user_alpha: Annotated[float, Field(ge=0)] = 0.0
    """L2 penalty on user features."""
    max_sampled: Annotated[int, Field(ge=1)] = 10
    """Negatives sampled per positive (WARP losses)."""
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    """Training threads (default: 1 on small data, where lock-free threads cost precision,
    else the CPUs, at most 4; not part of the version)."""
    seed: int = 42
    """Random seed."""
    action_weights: dict[str, Positive] = Field(
        default_factory=lambda: {str(a): w for a, w in DEFAULT_ACTION_WEIGHTS.items()}
    )
    """Weight of each action name in the logs (any name; the defaults are the shop's)."""
    weighting: Weighting = Weighting.AUTO
    """Summed weights → sample weight (auto: log for warp on graded actions, else binary)."""
    split: SplitKind = SplitKind.AUTO
    """Held-out split."""
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """Share held out."""
    validation_fraction: Fraction = 0.2
    """Share of training data for early stopping (0: off)."""
    # Random measured better on MovieLens: it only picks the epochs and the bias scale
    # (docs/quality.md).
    validation_split: SplitKind = SplitKind.RANDOM
    """How each user's validation share is drawn (auto: like the test split)."""
    patience: Annotated[int, Field(ge=1)] | None = None
    """Epochs without improvement (default: 700k updates' worth, at least 6)."""
    min_epochs: Annotated[int, Field(ge=1)] | None = None
    """Epochs before early stopping may stop (default: 1M updates' worth, at least 3)."""
    fold_validation: bool = True
    """Retrain on the fit and validation parts together for the epochs early stopping kept."""
    bias_scale: Annotated[float, Field(ge=0)] | None = None
    """Weight of the item bias in served scores (default: chosen on the validation part)."""
    ks: tuple[int, ...] = (5, 10)
    """Cut-offs (repeatable)."""
    early_stopping_metric: str = PRIMARY_METRIC
    """Validation metric to stop on, e.g. ndcg@10."""
    eval_users: Annotated[int, Field(ge=1)] | None = 10_000
    """Users sampled for evaluation."""
    validation_users: Annotated[int, Field(ge=1)] = 2_000
    """Users sampled for early stopping."""
    popular_items: Annotated[int, Field(ge=1, le=10_000)] = 100
    """Length of the popularity fallback list."""
    neighbours: Annotated[int, Field(ge=0, le=1000)] = 50
    """Item-to-item neighbours per item in the artifact, for the real-time policy (0: none)."""
    index_min_items: Annotated[int, Field(ge=0)] = 1_000_000
    """Build the approximate top-N index into the artifact from this many items up (0: always;
    the worker searches it above its own RECO_WORKER_ANN_MIN_ITEMS, docs/worker.md)."""
    index_kind: Literal["scann", "ivf", "hnsw"] = "scann"
    """``scann``: ScaNN's quantized partitions (reco_common.scann_index): at 1M items freshness
    p99 24-44 ms at 1,000 events/s (4 of 5 runs) against 199-430 ms for ``ivf``, the lists scored
    exactly by the worker (reco_common.ivf); ``hnsw``: the usearch graph (reco_common.ann).
    docs/benchmarks.md, "ScaNN at 1M items"."""
    index_lists: Annotated[int, Field(ge=0)] = 0
    """IVF lists or ScaNN leaves (0: ~sqrt(items), 1,000 at 1M)."""
    index_connectivity: Annotated[int, Field(ge=4, le=128)] = 32
    """The index's edges per item (HNSW's M): more gives recall at memory and build time."""
    index_expansion_add: Annotated[int, Field(ge=8, le=2048)] = 200
    """Candidates kept while the index is built (efConstruction)."""
    refit: bool = False
    """Retrain on all data after evaluation."""
    members: Annotated[int, Field(ge=1, le=16)] | None = None
    """Models served as one (seeds seed, seed+1, …; their factors side by side, so their
    scores are averaged; default: 3 below 200k fit pairs, else 1): averaging seeds lifts precision on
    MovieLens at members times the fold-in's training and the scoring cost (docs/quality.md);
    ``tune`` trains 3."""

    @field_validator("action_weights", mode="before")
    @classmethod
    def _action_names(cls, value: object) -> object:
        return action_weight_map(value) if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _metric_is_computed(self) -> Self:
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must hold positive cut-offs, e.g. 5,10")
        known = {f"{m}@{k}" for m in ("precision", "recall", "ndcg") for k in self.ks} | {"auc"}
        if self.early_stopping_metric not in known:
            raise ValueError(
                f"early_stopping_metric {self.early_stopping_metric!r} is not computed; "
                f"choose one of {sorted(known)}"
            )
        return self

    @property
    def early_stopping(self) -> bool:
        return self.validation_fraction > 0

    def updated(self, values: dict[str, Any]) -> TrainParams:
        """A validated copy with ``values`` replaced (e.g. a search's best)."""
        return TrainParams.model_validate({**self.model_dump(), **values})

    def identity(self) -> dict[str, Any]:
        """The parameters that determine the model (``threads`` changes speed, not the model)."""
        return self.model_dump(mode="json", exclude={"threads"})
