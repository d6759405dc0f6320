"""The quality gate: against the active model (relative regression) and the popularity baseline."""

from __future__ import annotations

import pytest

from reco_common.contracts import EvalMetrics
from reco_controller.gate import GatePolicy, evaluate

POLICY = GatePolicy(max_regression=0.05, baseline_margin=0.0)


def _m(model: dict[str, float], baseline: dict[str, float] | None = None) -> EvalMetrics:
    return EvalMetrics(model=model, baseline=baseline or {})


ACTIVE = _m({"precision@10": 0.20, "recall@10": 0.30}, {"precision@10": 0.05})


@pytest.mark.parametrize(
    ("precision", "passed"),
    [(0.25, True), (0.20, True), (0.19, True), (0.1899, False), (0.10, False)],
    ids=["better", "equal", "within-5pct", "just-beyond", "far-worse"],
)
def test_regression_against_the_active_model(precision: float, passed: bool) -> None:
    candidate = _m({"precision@10": precision, "recall@10": 0.30}, {"precision@10": 0.05})
    verdict = evaluate(candidate, ACTIVE, POLICY)
    assert verdict.passed is passed
    if not passed:
        assert "precision@10" in verdict.reason
        assert "below the active model's 0.2" in verdict.reason


def test_the_reason_names_every_failing_metric() -> None:
    candidate = _m({"precision@10": 0.01, "recall@10": 0.01}, {"precision@10": 0.05})
    reason = evaluate(candidate, ACTIVE, POLICY).reason
    assert "does not beat the popularity baseline's 0.05" in reason
    assert "precision@10 0.01 is 95.0% below" in reason
    assert "recall@10 0.01 is 96.7% below" in reason


def test_without_an_active_model_only_the_baseline_counts() -> None:
    assert evaluate(_m({"p": 0.06}, {"p": 0.05}), None, POLICY).passed
    refused = evaluate(_m({"p": 0.04}, {"p": 0.05}), None, POLICY)
    assert not refused.passed
    assert "baseline" in refused.reason


def test_a_baseline_margin_demands_a_lift() -> None:
    policy = GatePolicy(max_regression=0.05, baseline_margin=0.5)
    assert not evaluate(_m({"p": 0.07}, {"p": 0.05}), None, policy).passed
    assert evaluate(_m({"p": 0.08}, {"p": 0.05}), None, policy).passed


def test_gated_metrics_must_be_reported() -> None:
    policy = GatePolicy(max_regression=0.05, baseline_margin=0.0, metrics=("ndcg@10",))
    verdict = evaluate(_m({"p": 0.5}), None, policy)
    assert not verdict.passed
    assert "ndcg@10 is missing" in verdict.reason


def test_only_the_gated_metrics_are_judged() -> None:
    policy = GatePolicy(max_regression=0.05, baseline_margin=0.0, metrics=("recall@10",))
    candidate = _m({"precision@10": 0.01, "recall@10": 0.30})
    assert evaluate(candidate, ACTIVE, policy).passed


def test_a_model_without_metrics_is_refused() -> None:
    verdict = evaluate(_m({}), ACTIVE, POLICY)
    assert not verdict.passed
    assert "no metrics" in verdict.reason


def test_a_passing_verdict_says_what_was_compared() -> None:
    verdict = evaluate(_m({"precision@10": 0.3, "recall@10": 0.3}), ACTIVE, POLICY)
    assert verdict.reason == "passed: precision@10 0.3 vs active 0.2, recall@10 0.3 vs active 0.3"
