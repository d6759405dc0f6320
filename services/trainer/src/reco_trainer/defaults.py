"""The defaults that depend on the data: what ``loss``/``weighting`` ``auto`` and unset
``threads``, ``min_epochs``, ``patience`` and ``members`` become for one log.

Each rule is a pure function of facts read from the data (the actions the log names, the
number of fit pairs) or of the machine (the CPUs, for ``threads`` only, which do not name the
model). The job's version is computed from the parameters as given (``auto`` included), so it
stays a function of the data; the resolved values are what the report and the manifest record.
Every figure behind the constants is in docs/quality.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reco_trainer.params import Loss, TrainParams, Weighting

MIN_UPDATES = 1_000_000
"""Updates (fit pairs times epochs) before early stopping may stop: 31 epochs on MovieLens'
33k fit pairs, where the validation metric is still noisy before 30."""
PATIENCE_UPDATES = 700_000
"""Updates without improvement before early stopping stops (22 epochs on MovieLens)."""
MIN_EPOCHS_FLOOR = 3
"""Fewest minimum epochs (the 1M-interaction shop's 464k fit pairs get 3)."""
PATIENCE_FLOOR = 6
"""Fewest epochs of patience: on the 1M-interaction shop a patience of 3 stopped after 11-12
epochs on a dip, 6 ran to 33 and kept epoch 27, +2.4 % precision@10 for twice the CPU."""
SINGLE_THREAD_BELOW = 200_000
"""Fit pairs under which training runs on one thread: LightFM's threads update shared
factors without locks, which cost MovieLens (33k fit pairs) 3-7 % of its precision@10 and
bought no wall time there; a one-thread run is short at this size, and deterministic."""
MAX_THREADS = 4
"""Most threads ``auto`` gives (the CronJob's CPU limit; more were not measured)."""
ENSEMBLE_BELOW = 200_000
"""Fit pairs under which the model is an ensemble of :data:`ENSEMBLE_MEMBERS` seeds: on small
data one model's precision moves by several percent between LightFM seeds, and averaging them
is the one change that lifted every MovieLens split; above, each member costs minutes."""
ENSEMBLE_MEMBERS = 3
"""Members of a small data set's ensemble (the members train on one thread, one after the
other, for the epochs the first one's early stopping kept)."""


@dataclass(frozen=True, slots=True)
class DataFacts:
    """What the rules read from the data and the machine."""

    fit_pairs: int
    graded: bool  # the log names actions that weigh differently (view, cart, purchase)
    cpus: int


def is_graded(actions: Iterable[str], action_weights: Mapping[str, float]) -> bool:
    """Whether the actions a log names carry more than one distinct weight (implicit feedback
    of several strengths); ratings filtered by a threshold and single-action logs do not."""
    return len({action_weights[a] for a in actions if a in action_weights}) > 1


def loss_for(*, graded: bool) -> Loss:
    """warp where sample weights carry information (warp-kos takes none), warp-kos otherwise:
    it beat warp on MovieLens' thresholded ratings, and warp with log weights beat it on the
    shop's view/cart/purchase log."""
    return Loss.WARP if graded else Loss.WARP_KOS


def weighting_for(loss: Loss, *, graded: bool) -> Weighting:
    """Log-scaled summed weights for graded logs under a loss that takes weights, else 1."""
    return Weighting.LOG if graded and loss is not Loss.WARP_KOS else Weighting.BINARY


def epochs_for(updates: int, fit_pairs: int, *, floor: int) -> int:
    """The epochs that make ``updates`` updates over ``fit_pairs`` pairs, at least ``floor``."""
    return max(floor, math.ceil(updates / max(fit_pairs, 1)))


def threads_for(fit_pairs: int, cpus: int) -> int:
    """One thread below :data:`SINGLE_THREAD_BELOW` fit pairs, else the CPUs up to
    :data:`MAX_THREADS`."""
    if fit_pairs < SINGLE_THREAD_BELOW:
        return 1
    return max(1, min(cpus, MAX_THREADS))


def members_for(fit_pairs: int) -> int:
    """:data:`ENSEMBLE_MEMBERS` below :data:`ENSEMBLE_BELOW` fit pairs, else one model."""
    return ENSEMBLE_MEMBERS if fit_pairs < ENSEMBLE_BELOW else 1


def resolve(params: TrainParams, facts: DataFacts) -> TrainParams:
    """``params`` with every data-dependent default replaced by its value for ``facts``."""
    loss = loss_for(graded=facts.graded) if params.loss is Loss.AUTO else params.loss
    weighting = params.weighting
    if weighting is Weighting.AUTO:
        weighting = weighting_for(loss, graded=facts.graded)
    return params.model_copy(
        update={
            "loss": loss,
            "weighting": weighting,
            "threads": _given(params.threads, threads_for(facts.fit_pairs, facts.cpus)),
            "min_epochs": _given(params.min_epochs, _min_epochs(facts.fit_pairs)),
            "patience": _given(params.patience, _patience(facts.fit_pairs)),
            "members": _given(params.members, members_for(facts.fit_pairs)),
        }
    )


def left_to_data(params: TrainParams) -> list[str]:
    """The names of the parameters :func:`resolve` chooses for ``params``."""
    left = {
        "loss": params.loss is Loss.AUTO,
        "weighting": params.weighting is Weighting.AUTO,
        "threads": params.threads is None,
        "min_epochs": params.min_epochs is None,
        "patience": params.patience is None,
        "members": params.members is None,
    }
    return [name for name, is_left in left.items() if is_left]


def _min_epochs(fit_pairs: int) -> int:
    return epochs_for(MIN_UPDATES, fit_pairs, floor=MIN_EPOCHS_FLOOR)


def _patience(fit_pairs: int) -> int:
    return epochs_for(PATIENCE_UPDATES, fit_pairs, floor=PATIENCE_FLOOR)


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit, which the affinity does not show)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.floor(int(quota) / int(period))))
