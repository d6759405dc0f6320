"""The quality gate: may a newly published model replace the one the workers serve?

Every gated metric is a ranking quality where higher is better (precision@k, recall@k, ndcg@k,
...). The candidate passes when, for each gated metric, it is

- not worse than the active model's figure by more than ``max_regression`` (relative), and
- at least its own popularity baseline's figure times ``1 + baseline_margin``.

The gate fails closed: the gated metrics are configured (by default the trainer's primary
metric, :data:`reco_common.contracts.PRIMARY_METRIC`), never chosen by the candidate; a figure
that is missing (the candidate's, its baseline's, or the active model's) or not finite (NaN
compares false with everything, so it would pass every comparison) refuses the candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from reco_common.contracts import PRIMARY_METRIC, EvalMetrics


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """``metrics``: the gated names, at least one."""

    max_regression: float
    baseline_margin: float
    metrics: tuple[str, ...] = (PRIMARY_METRIC,)

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError("the quality gate needs at least one gated metric")


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reason: str


def evaluate(candidate: EvalMetrics, active: EvalMetrics | None, policy: GatePolicy) -> Verdict:
    """Judge ``candidate`` against ``active`` (``None``: nothing served yet) and its baseline."""
    problems = [
        problem
        for name in policy.metrics
        for problem in _problems(name, candidate=candidate, active=active, policy=policy)
    ]
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, _summary(policy.metrics, candidate, active))


def _problems(
    name: str, *, candidate: EvalMetrics, active: EvalMetrics | None, policy: GatePolicy
) -> Sequence[str]:
    figures = {
        "the model's metrics": candidate.model.get(name),
        "the popularity baseline's metrics": candidate.baseline.get(name),
    }
    if active is not None:
        figures["the active model's metrics"] = active.model.get(name)
    unusable = [_unusable(name, where, value) for where, value in figures.items()]
    if any(unusable):
        return [problem for problem in unusable if problem]
    value, baseline = candidate.model[name], candidate.baseline[name]
    found = []
    if value < baseline * (1 + policy.baseline_margin):
        found.append(
            f"{name} {value:.4g} does not beat the popularity baseline's {baseline:.4g}"
            f" (required margin {policy.baseline_margin:+.1%})"
        )
    current = active.model[name] if active is not None else None
    if current is not None and value < current * (1 - policy.max_regression):
        found.append(
            f"{name} {value:.4g} is {_drop(value, current):.1%} below the active model's"
            f" {current:.4g} (allowed {policy.max_regression:.1%})"
        )
    return found


def _unusable(name: str, where: str, value: float | None) -> str:
    if value is None:
        return f"{name} is missing from {where}"
    if not math.isfinite(value):
        return f"{name} is {value} in {where}: not a finite number"
    return ""


def _drop(value: float, reference: float) -> float:
    return (reference - value) / reference if reference else 0.0


def _summary(names: Sequence[str], candidate: EvalMetrics, active: EvalMetrics | None) -> str:
    parts = []
    for name in names:
        against = f" vs active {active.model[name]:.4g}" if active is not None else ""
        parts.append(f"{name} {candidate.model[name]:.4g}{against}")
    return "passed: " + ", ".join(parts)
