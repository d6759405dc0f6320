"""The quality gate: may a newly published model replace the one the workers serve?

Every gated metric is a ranking quality where higher is better (precision@k, recall@k, ndcg@k,
...). The candidate passes when, for each gated metric, it is

- not worse than the active model's figure by more than ``max_regression`` (relative), and
- at least its own popularity baseline's figure times ``1 + baseline_margin``.

A model that reports no gated metric is refused: there is nothing to judge it by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reco_common.contracts import EvalMetrics


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """``metrics``: the gated names; empty means every metric the candidate reports."""

    max_regression: float
    baseline_margin: float
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reason: str


def evaluate(candidate: EvalMetrics, active: EvalMetrics | None, policy: GatePolicy) -> Verdict:
    """Judge ``candidate`` against ``active`` (``None``: nothing served yet) and its baseline."""
    names = policy.metrics or tuple(sorted(candidate.model))
    if not names:
        return Verdict(False, "the model reports no metrics to judge it by")
    problems = [
        problem
        for name in names
        for problem in _problems(name, candidate=candidate, active=active, policy=policy)
    ]
    if problems:
        return Verdict(False, "; ".join(problems))
    return Verdict(True, _summary(names, candidate, active))


def _problems(
    name: str, *, candidate: EvalMetrics, active: EvalMetrics | None, policy: GatePolicy
) -> Sequence[str]:
    value = candidate.model.get(name)
    if value is None:
        return [f"{name} is missing from the model's metrics"]
    found = []
    baseline = candidate.baseline.get(name)
    if baseline is not None and value < baseline * (1 + policy.baseline_margin):
        found.append(
            f"{name} {value:.4g} does not beat the popularity baseline's {baseline:.4g}"
            f" (required margin {policy.baseline_margin:+.1%})"
        )
    current = active.model.get(name) if active is not None else None
    if current is not None and value < current * (1 - policy.max_regression):
        found.append(
            f"{name} {value:.4g} is {_drop(value, current):.1%} below the active model's"
            f" {current:.4g} (allowed {policy.max_regression:.1%})"
        )
    return found


def _drop(value: float, reference: float) -> float:
    return (reference - value) / reference if reference else 0.0


def _summary(names: Sequence[str], candidate: EvalMetrics, active: EvalMetrics | None) -> str:
    parts = []
    for name in names:
        current = active.model.get(name) if active is not None else None
        against = f" vs active {current:.4g}" if current is not None else ""
        parts.append(f"{name} {candidate.model[name]:.4g}{against}")
    return "passed: " + ", ".join(parts)
