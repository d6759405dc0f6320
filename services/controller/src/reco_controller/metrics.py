"""The controller's Prometheus metrics (``reco_controller_*``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from reco_common.metrics import LATENCY_BUCKETS, MetricFactory

SERVICE = "controller"
# A rollout takes seconds to minutes.
ROLLOUT_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 240, 480)


@dataclass(frozen=True, slots=True)
class ControllerMetrics:
    decisions: Counter
    rollout_events: Counter
    patch_latency: Histogram
    rollout_duration: Histogram
    leader: Gauge
    leadership_changes: Counter
    activations: Counter

    @staticmethod
    @functools.cache
    def create() -> ControllerMetrics:
        """One set per process (the default registry refuses duplicates)."""
        metric = MetricFactory(SERVICE)
        return ControllerMetrics(
            decisions=metric.counter(
                "decisions", "What the controller decided about each published model", ["decision"]
            ),
            rollout_events=metric.counter("rollout_events", "Rollout events published", ["status"]),
            patch_latency=metric.histogram(
                "patch_latency",
                "From the model-published record's timestamp to the rollout patch applied",
                buckets=LATENCY_BUCKETS,
            ),
            rollout_duration=metric.histogram(
                "rollout_duration",
                "From the rollout patch applied to the rollout complete or failed",
                buckets=ROLLOUT_BUCKETS,
            ),
            leader=metric.gauge("leader", "1 while this replica holds the leader lease"),
            leadership_changes=metric.counter(
                "leadership_changes",
                "Times this replica became or stopped being the leader",
                ["change"],
            ),
            activations=metric.counter(
                "activations",
                "Writes of a model's active record: switched, stale (a newer epoch was there)"
                " or failed (retried by the next check)",
                ["result"],
            ),
        )
