"""The worker's Prometheus metrics (``reco_worker_*``), created once per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from reco_common.metrics import LATENCY_BUCKETS, ConsumerMetrics, MetricFactory

SERVICE = "worker"
# Freshness is the worker's headline figure: finer buckets where the goal (50 ms p99) lives.
FRESHNESS_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    consumer: ConsumerMetrics
    actions: Counter
    lists: Counter
    stale_lists: Counter
    recompute: Histogram
    indexed_queries: Counter
    index_fallbacks: Counter
    threshold_rescans: Counter
    index_probes: Gauge
    freshness: Histogram
    errors: Counter
    clamped_timestamps: Counter
    unknown_items: Counter
    bad_history_members: Counter
    model_loads: Counter
    model_info: Gauge
    redis_writable: Gauge
    rebuilds: Counter

    @staticmethod
    @functools.cache
    def create() -> WorkerMetrics:
        """The process-wide set (the default registry refuses duplicates)."""
        metric = MetricFactory(SERVICE)
        return WorkerMetrics(
            consumer=ConsumerMetrics.for_service(SERVICE),
            actions=metric.counter(
                "actions_applied",
                "User actions applied to a history and a recomputed list",
            ),
            lists=metric.counter(
                "lists_written",
                "Recommendation lists written, by where the list came from",
                ["source"],
            ),
            stale_lists=metric.counter(
                "stale_lists_refused",
                "Lists not written because a newer log position already wrote them (fencing)",
            ),
            recompute=metric.histogram(
                "recompute",
                "Time to score one batch of users (matrix product and top-N)",
                buckets=LATENCY_BUCKETS,
            ),
            indexed_queries=metric.counter(
                "indexed_queries",
                "Users whose top-N candidates came from the artifact's approximate index",
            ),
            index_fallbacks=metric.counter(
                "index_exact_fallbacks",
                "Users of the index left with too few candidates once their own items were "
                "excluded, scored exactly instead",
            ),
            threshold_rescans=metric.counter(
                "threshold_rescans",
                "Users whose sampled threshold left too few candidates: their probed lists (or "
                "the catalog) scanned again without it",
            ),
            index_probes=metric.gauge(
                "index_probes",
                "IVF lists each user's query probes, or ScaNN leaves it searches, in the model "
                "served (0: searched exactly), as its recall curve and RECO_WORKER_ANN_RECALL "
                "give or RECO_WORKER_ANN_PROBES fixes",
            ),
            freshness=metric.histogram(
                "freshness",
                "Event timestamp to the Redis write of the list it changed",
                buckets=FRESHNESS_BUCKETS,
            ),
            errors=metric.counter(
                "errors",
                "Failures while handling a batch (the batch is retried), by stage",
                ["stage"],
            ),
            clamped_timestamps=metric.counter(
                "clamped_timestamps",
                "Events dated too far in the future, clamped to their record timestamp",
            ),
            unknown_items=metric.counter(
                "unknown_items",
                "Actions on items the active model does not know (kept in history, not scored)",
            ),
            bad_history_members=metric.counter(
                "bad_history_members",
                "History entries in Redis that did not decode and were skipped",
            ),
            model_loads=metric.counter(
                "model_loads",
                "Model load attempts, by outcome",
                ["outcome"],
            ),
            redis_writable=metric.gauge(
                "redis_writable",
                "1 while Redis accepts the worker's writes, 0 since a batch's writes failed "
                "(out of memory, read-only replica, unreachable): the worker is then not ready",
            ),
            rebuilds=metric.counter(
                "rebuilds",
                "Rebuilds of Redis from the log after its data was lost, by outcome",
                ["outcome"],
            ),
            model_info=metric.gauge(
                "model_info",
                "1 for the model version in memory",
                ["model", "version"],
            ),
        )
