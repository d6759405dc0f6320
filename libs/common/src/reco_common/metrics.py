"""Prometheus naming (``reco_<service>_<name>_<unit>``) and the metrics shared by every consumer."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_PART = re.compile(r"^[a-z][a-z0-9_]*$")

# Latency buckets from 1 ms to 10 s: freshness and handler times live in this range.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


def metric_name(service: str, name: str, unit: str = "") -> str:
    """``reco_<service>_<name>_<unit>``; counters add ``_total`` themselves (prometheus_client)."""
    parts = [service, name, *([unit] if unit else [])]
    for part in parts:
        if not _PART.match(part):
            raise ValueError(f"metric name part {part!r} must match {_PART.pattern}")
    return "_".join(["reco", *parts])


@dataclass(frozen=True, slots=True)
class MetricFactory:
    """Builds one service's metrics, named ``reco_<service>_<name>_<unit>``, in one registry."""

    service: str
    registry: CollectorRegistry = REGISTRY

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(metric_name(self.service, name), doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (), *, unit: str = "") -> Gauge:
        return Gauge(metric_name(self.service, name, unit), doc, labels, registry=self.registry)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        unit: str = "seconds",
    ) -> Histogram:
        return Histogram(
            metric_name(self.service, name, unit),
            doc,
            labels,
            buckets=buckets,
            registry=self.registry,
        )


@dataclass(frozen=True, slots=True)
class ConsumerMetrics:
    """What :class:`reco_common.kafka.EventConsumer` reports for one service."""

    events: Counter
    batch_size: Histogram
    batch_failures: Counter
    handler_retries: Counter
    commit_failures: Counter
    dead_lettered: Counter
    dead_letters_parked: Counter
    lag: Gauge

    @staticmethod
    @functools.cache
    def for_service(service: str) -> ConsumerMetrics:
        """One set per service and process (the default registry refuses duplicates)."""
        metric = MetricFactory(service)
        return ConsumerMetrics(
            events=metric.counter("events_consumed", "Records consumed and committed"),
            batch_size=metric.histogram(
                "batch_size", "Records per fetched batch", buckets=SIZE_BUCKETS, unit="records"
            ),
            batch_failures=metric.counter(
                "batch_failures", "Batches sought back after retries ran out"
            ),
            handler_retries=metric.counter("handler_retries", "Batch handler attempts that failed"),
            commit_failures=metric.counter("commit_failures", "Offset commits refused (rebalance)"),
            dead_lettered=metric.counter(
                "dead_lettered", "Records sent to the dead-letter topic", ["error_type"]
            ),
            dead_letters_parked=metric.counter(
                "dead_letters_parked",
                "Rejected records the dead-letter topic refused: logged with their coordinates, "
                "left in the source topic, and skipped",
                ["error_type"],
            ),
            lag=metric.gauge(
                "consumer_lag", "Records behind the high watermark", ["partition"], unit="records"
            ),
        )
