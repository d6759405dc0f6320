"""What a run shows: the workers' Prometheus metrics, the model and rollout topics, the API.

Everything is read from the outside, as an operator would: ``/metrics`` and ``/v1/model`` of
each worker, ``model-published`` and ``rollout-events`` on Kafka, the active record in Redis,
and the public API.
Freshness quantiles come from the workers' ``reco_worker_freshness_seconds`` histogram, summed
over the workers and interpolated inside a bucket like Prometheus' ``histogram_quantile``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import RedisError

from reco_common.contracts import (
    MODEL_CONTROL_PATH,
    ContractError,
    ModelPublished,
    RolloutEvent,
    WorkerModelState,
    decode,
)
from reco_common.kafka import ensure_topics
from reco_common.redis_store import read_active
from reco_common.settings import KafkaSettings, RedisSettings

logger = logging.getLogger(__name__)

FRESHNESS: Final = "reco_worker_freshness_seconds"
APPLIED: Final = "reco_worker_actions_applied"
Buckets = dict[float, float]  # upper bound → cumulative count


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class WorkerScrape:
    """The workers' figures at one moment, summed over the workers that answered."""

    at: float
    applied: float = 0.0
    freshness: Buckets = field(default_factory=dict)
    answered: int = 0

    def since(self, earlier: WorkerScrape) -> WorkerScrape:
        """The increase from ``earlier`` (a window); counters that went down count from zero."""
        applied = self.applied - earlier.applied
        if applied < 0:
            return self
        buckets = {
            le: count - earlier.freshness.get(le, 0.0) for le, count in self.freshness.items()
        }
        return WorkerScrape(self.at, applied, buckets, self.answered)


def parse_worker_metrics(text: str) -> tuple[float, Buckets]:
    """``reco_worker_actions_applied_total`` and the freshness buckets of one worker."""
    applied = 0.0
    buckets: Buckets = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{APPLIED}_total":
                applied += sample.value
            elif sample.name == f"{FRESHNESS}_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return applied, buckets


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of a cumulative histogram (``None`` when it holds no observation)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bucket: its bound, as Prometheus does
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


async def scrape_workers(http: httpx.AsyncClient, base_urls: Sequence[str]) -> WorkerScrape:
    texts = await asyncio.gather(
        *(http.get(f"{url}/metrics", timeout=2.0) for url in base_urls), return_exceptions=True
    )
    applied, answered = 0.0, 0
    total: Buckets = {}
    for text in texts:
        if isinstance(text, httpx.Response) and text.status_code == 200:
            count, buckets = parse_worker_metrics(text.text)
            applied += count
            for le, value in buckets.items():
                total[le] = total.get(le, 0.0) + value
            answered += 1
    return WorkerScrape(time.monotonic(), applied, total, answered)


async def worker_versions(
    http: httpx.AsyncClient, base_urls: Sequence[str], *, headers: Mapping[str, str]
) -> list[str | None]:
    """The model version each worker serves (``None``: none yet, or it does not answer);
    ``headers`` carry the model-control bearer token."""

    async def one(url: str) -> str | None:
        try:
            reply = await http.get(f"{url}{MODEL_CONTROL_PATH}", headers=headers, timeout=2.0)
            return decode(WorkerModelState, reply.content).version
        except (httpx.HTTPError, ContractError):
            return None

    return list(await asyncio.gather(*(one(url) for url in base_urls)))


# --------------------------------------------------------------------------- the API


async def recommendations(
    http: httpx.AsyncClient, api_url: str, user_id: str, *, n: int = 10
) -> dict[str, Any] | None:
    """The API's answer for ``user_id`` (``None`` when it does not answer 200)."""
    try:
        response = await http.get(f"{api_url}/v1/users/{user_id}/recommendations", params={"n": n})
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


# --------------------------------------------------------------------------- Kafka


class ModelTopics:
    """Follows ``model-published`` and ``rollout-events`` from their start, without a group."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._consumer: AIOKafkaConsumer | None = None
        self.published: list[ModelPublished] = []
        self.rollouts: list[RolloutEvent] = []

    async def start(self) -> None:
        topics = self._kafka.topics
        await ensure_topics(self._kafka, topics.model_published, topics.rollout_events)
        # "earliest" for the initial position: a default "latest" reset can race a seek.
        self._consumer = AIOKafkaConsumer(
            **self._kafka.client_options(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()
        partitions = [TopicPartition(t, 0) for t in (topics.model_published, topics.rollout_events)]
        self._consumer.assign(partitions)

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, *, timeout_ms: int = 0) -> list[ModelPublished | RolloutEvent]:
        """The events that arrived since the last poll, in order."""
        if self._consumer is None:
            raise RuntimeError("start() first")
        batches = await self._consumer.getmany(timeout_ms=timeout_ms)
        arrived: list[ModelPublished | RolloutEvent] = []
        for tp, records in batches.items():
            for record in records:
                try:
                    if tp.topic == self._kafka.topics.model_published:
                        published = decode(ModelPublished, record.value)
                        self.published.append(published)
                        arrived.append(published)
                    else:
                        rollout = decode(RolloutEvent, record.value)
                        self.rollouts.append(rollout)
                        arrived.append(rollout)
                except ContractError as exc:
                    logger.warning("%s: skipping a record that does not decode: %s", tp.topic, exc)
        return arrived

    async def wait_for(self, version: str, status: str, *, timeout_s: float) -> RolloutEvent:
        """The rollout event of ``version`` with ``status`` (fails on a rejection or a failure)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.poll(timeout_ms=200)
            for event in self.rollouts:
                if event.version != version:
                    continue
                if event.status.value == status:
                    return event
                if event.status.value in ("rejected", "failed", "rolled_back"):
                    raise RuntimeError(f"rollout of {version} {event.status.value}: {event.reason}")
        raise TimeoutError(f"no {status} rollout of {version} within {timeout_s:g} s")

    async def wait_published(self, *, count: int, timeout_s: float) -> ModelPublished:
        """The ``count``-th model announced on ``model-published``."""
        deadline = time.monotonic() + timeout_s
        while len(self.published) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"model #{count} not published within {timeout_s:g} s")
            await self.poll(timeout_ms=200)
        return self.published[count - 1]


# --------------------------------------------------------------------------- Redis


async def active_version(redis: Redis, settings: RedisSettings, model_name: str) -> str | None:
    """The version a model's active record names (``None``: no record, or no answer)."""
    try:
        active = await read_active(redis, settings.keys, model_name)
    except (RedisError, OSError):
        return None
    return active.version if active else None


class ActiveVersions:
    """Every version a model's active record names, sampled every ``every_s`` while it runs
    (``None`` for no record): what the API's fallback showed over a stretch of time."""

    def __init__(
        self, redis: Redis, settings: RedisSettings, model_name: str, *, every_s: float = 0.05
    ) -> None:
        self.seen: list[str | None] = []
        self._task = asyncio.create_task(self._sample(redis, settings, model_name, every_s))

    async def _sample(
        self, redis: Redis, settings: RedisSettings, model_name: str, every_s: float
    ) -> None:
        while True:
            self.seen.append(await active_version(redis, settings, model_name))
            await asyncio.sleep(every_s)

    async def stop(self) -> set[str | None]:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return set(self.seen)
