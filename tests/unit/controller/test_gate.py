"""The quality gate: against the active model (relative regression) and the popularity baseline;
it fails closed (configured metrics, missing or non-finite figures refuse)."""

from __future__ import annotations

import math

import pytest

from reco_common.contracts import PRIMARY_METRIC, EvalMetrics
from reco_controller.gate import GatePolicy, evaluate

BOTH = ("precision@10", "recall@10")
POLICY = GatePolicy(max_regression=0.05, baseline_margin=0.0, metrics=BOTH)
ON_P = GatePolicy(max_regression=0.05, baseline_margin=0.0, metrics=("p",))


def _m(model: dict[str, float], baseline: dict[str, float] | None = None) -> EvalMetrics:
    return EvalMetrics(model=model, baseline=baseline or {})


BASELINE = {"precision@10": 0.05, "recall@10": 0.05}
ACTIVE = _m({"precision@10": 0.20, "recall@10": 0.30}, BASELINE)


@pytest.mark.parametrize(
    ("precision", "passed"),
    [(0.25, True), (0.20, True), (0.19, True), (0.1899, False), (0.10, False)],
    ids=["better", "equal", "within-5pct", "just-beyond", "far-worse"],
)
def test_regression_against_the_active_model(precision: float, passed: bool) -> None:
    candidate = _m({"precision@10": precision, "recall@10": 0.30}, BASELINE)
    verdict = evaluate(candidate, ACTIVE, POLICY)
    assert verdict.passed is passed
    if not passed:
        assert "precision@10" in verdict.reason
        assert "below the active model's 0.2" in verdict.reason


def test_the_reason_names_every_failing_metric() -> None:
    candidate = _m({"precision@10": 0.01, "recall@10": 0.01}, BASELINE)
    reason = evaluate(candidate, ACTIVE, POLICY).reason
    assert "does not beat the popularity baseline's 0.05" in reason
    assert "precision@10 0.01 is 95.0% below" in reason
    assert "recall@10 0.01 is 96.7% below" in reason


def test_without_an_active_model_only_the_baseline_counts() -> None:
    assert evaluate(_m({"p": 0.06}, {"p": 0.05}), None, ON_P).passed
    refused = evaluate(_m({"p": 0.04}, {"p": 0.05}), None, ON_P)
    assert not refused.passed
    assert "baseline" in refused.reason


def test_a_baseline_margin_demands_a_lift() -> None:
    policy = GatePolicy(max_regression=0.05, baseline_margin=0.5, metrics=("p",))
    assert not evaluate(_m({"p": 0.07}, {"p": 0.05}), None, policy).passed
    assert evaluate(_m({"p": 0.08}, {"p": 0.05}), None, policy).passed


def test_gated_metrics_must_be_reported() -> None:
    policy = GatePolicy(max_regression=0.05, baseline_margin=0.0, metrics=("ndcg@10",))
    verdict = evaluate(_m({"p": 0.5}), None, policy)
    assert not verdict.passed
    assert "ndcg@10 is missing" in verdict.reason


def test_only_the_gated_metrics_are_judged() -> None:
    policy = GatePolicy(max_regression=0.05, baseline_margin=0.0, metrics=("recall@10",))
    candidate = _m({"precision@10": 0.01, "recall@10": 0.30}, BASELINE)
    assert evaluate(candidate, ACTIVE, policy).passed


def test_a_model_without_metrics_is_refused() -> None:
    verdict = evaluate(_m({}), ACTIVE, POLICY)
    assert not verdict.passed
    assert "precision@10 is missing from the model's metrics" in verdict.reason


def test_a_passing_verdict_says_what_was_compared() -> None:
    verdict = evaluate(_m({"precision@10": 0.3, "recall@10": 0.3}, BASELINE), ACTIVE, POLICY)
    assert verdict.reason == "passed: precision@10 0.3 vs active 0.2, recall@10 0.3 vs active 0.3"


# --------------------------------------------------------------------------- fails closed


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["model", "baseline", "active"])
def test_a_non_finite_figure_is_refused(bad: float, where: str) -> None:
    """NaN compares false with everything: without the check it passed every comparison."""
    figures = {"model": {"p": 0.5}, "baseline": {"p": 0.1}, "active": {"p": 0.4}}
    figures[where] = {"p": bad}
    candidate = _m(figures["model"], figures["baseline"])
    verdict = evaluate(candidate, _m(figures["active"]), ON_P)
    assert not verdict.passed
    assert "not a finite number" in verdict.reason


def test_by_default_the_primary_metric_is_judged_not_what_the_candidate_reports() -> None:
    """The candidate cannot choose its judge by reporting only a metric it is good at."""
    assert GatePolicy(max_regression=0.05, baseline_margin=0.0).metrics == (PRIMARY_METRIC,)
    flattering = _m({"auc": 0.99}, {"auc": 0.5})
    verdict = evaluate(flattering, None, GatePolicy(max_regression=0.05, baseline_margin=0.0))
    assert not verdict.passed
    assert f"{PRIMARY_METRIC} is missing from the model's metrics" in verdict.reason


def test_a_gate_without_metrics_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="at least one gated metric"):
        GatePolicy(max_regression=0.05, baseline_margin=0.0, metrics=())


def test_a_missing_baseline_figure_is_refused() -> None:
    verdict = evaluate(_m({"p": 0.5}, {}), None, ON_P)
    assert not verdict.passed
    assert "p is missing from the popularity baseline's metrics" in verdict.reason


def test_a_missing_active_figure_is_refused() -> None:
    verdict = evaluate(_m({"p": 0.5}, {"p": 0.1}), _m({"q": 0.4}), ON_P)
    assert not verdict.passed
    assert "p is missing from the active model's metrics" in verdict.reason
