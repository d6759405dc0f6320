"""The batch handler: a fetched batch of user actions becomes updated histories and lists.

Per batch: screen and coalesce the events per user, append them to the histories and read the
histories back (one round trip), score every affected user at once (on the event loop:
``score`` below), and replace the lists (one round trip). A batch whose Redis writes fail clears the ``writable``
event (a readiness check) until a batch is written again. Both writes carry
each user's newest log position and are fenced (``reco_common.redis_store``): a worker that lost
its partitions mid-batch cannot overwrite what the new owner wrote. The consumer commits only
after this returns, so a crash anywhere redelivers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.exceptions import RedisError

from reco_common.contracts import (
    RecommendationList,
    UserAction,
    encode_history_member,
    encode_recommendations,
)
from reco_common.kafka import Delivery, Rejection
from reco_common.redis_store import FencedLists, FencedWrite, Position, RedisClient
from reco_worker.history import Addition, HistoryStore, effective_ts
from reco_worker.metrics import WorkerMetrics
from reco_worker.scoring import Histories, Policy, Ranked, ServingModel, score
from reco_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

# Every batch is scored on the event loop, which waits for it (at most a batch of 500 users:
# ~0.2 s at 1M items through the index, ~0.9 s exact; heartbeats and probes allow seconds).
# Small batches were scored inline since session 7 (a thread's handoff cost more latency than
# the scoring); larger ones went to a thread so that the loop kept serving, but the two then
# contend for the GIL. At 1M items through ScaNN, inline against the thread, alternated: 2,053-
# 2,298 against 1,585-2,109 events/s draining, freshness p99 at 1,000/s 24-44 ms in 4 of 5 runs
# against 26-216 ms (docs/benchmarks.md, session 10); at 10k and 100k items no difference
# beyond the noise.


@dataclass(slots=True)
class UserUpdate:
    """One user's share of a batch: the history members to add, the newest event and where it is."""

    last: UserAction
    position: Position
    members: dict[bytes, float] = field(default_factory=dict)
    event_times: list[float] = field(default_factory=list)
    items: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Coalesced:
    updates: dict[str, UserUpdate]
    rejections: list[Rejection]
    clamped: int


def coalesce(deliveries: Sequence[Delivery[UserAction]], *, max_future_skew_s: float) -> Coalesced:
    """Group a batch by user in delivery order; refuse records whose key is not their user."""
    updates: dict[str, UserUpdate] = {}
    rejections: list[Rejection] = []
    clamped = 0
    for delivery in deliveries:
        event, record = delivery.event, delivery.record
        user_id = event.user_id
        if record.key != user_id.encode():
            rejections.append(Rejection(record, _key_mismatch(record.key, user_id)))
            continue
        ts = effective_ts(event, record_ts_ms=record.timestamp, max_future_skew_s=max_future_skew_s)
        clamped += ts < event.ts.timestamp()
        position = Position(record.partition, record.offset)
        update = updates.get(user_id)
        if update is None:
            update = updates[user_id] = UserUpdate(last=event, position=position)
        else:
            update.last, update.position = event, position
        update.members[encode_history_member(event)] = ts
        update.event_times.append(ts)
        update.items.append(event.item_id)
    return Coalesced(updates, rejections, clamped)


def _key_mismatch(key: bytes | None, user_id: str) -> str:
    shown = "no key" if key is None else f"key {key[:64]!r}"
    return f"record has {shown} but user_id {user_id!r}: user-actions must be keyed by user id"


class ActionHandler:
    """The :class:`reco_common.kafka.EventConsumer` handler of ``user-actions``."""

    def __init__(
        self,
        *,
        lists: FencedLists,
        history: HistoryStore,
        model: Callable[[], ServingModel],
        policy: Policy,
        max_future_skew_s: float,
        metrics: WorkerMetrics,
        writable: asyncio.Event,
    ) -> None:
        self._lists = lists
        self._writable = writable
        self._history = history
        self._model = model
        self._policy = policy
        self._max_future_skew_s = max_future_skew_s
        self._metrics = metrics

    async def __call__(self, deliveries: Sequence[Delivery[UserAction]]) -> list[Rejection]:
        batch = coalesce(deliveries, max_future_skew_s=self._max_future_skew_s)
        self._metrics.clamped_timestamps.inc(batch.clamped)
        if batch.updates:
            await self._apply(batch.updates)
        return batch.rejections

    async def _apply(self, updates: dict[str, UserUpdate]) -> None:
        model = self._model()  # one model per batch: a swap takes effect from the next batch
        with self._stage("history"):
            histories = await self._history.append_and_read(
                {user_id: Addition(u.position, u.members) for user_id, u in updates.items()}
            )
        with self._stage("score"):
            started = time.perf_counter()
            batch = Histories.of_columns([(user, histories[user]) for user in updates])
            selector = model.selector
            indexed, fallbacks = selector.indexed_queries, selector.exact_fallbacks
            rescans = selector.threshold_rescans
            ranked = score(model, batch, self._policy)
            self._metrics.recompute.observe(time.perf_counter() - started)
            self._metrics.indexed_queries.inc(selector.indexed_queries - indexed)
            self._metrics.index_fallbacks.inc(selector.exact_fallbacks - fallbacks)
            self._metrics.threshold_rescans.inc(selector.threshold_rescans - rescans)
        computed_at = datetime.now(UTC)
        lists = {
            user_id: FencedWrite(
                encode_recommendations(stamped(r, model, update.last, computed_at)), update.position
            )
            for (user_id, update), r in zip(updates.items(), ranked, strict=True)
        }
        with self._stage("write"):
            stale = await self._lists.replace(model.name, lists)
        if stale:
            logger.warning("%d lists not written: a newer log position already wrote them", stale)
            self._metrics.stale_lists.inc(stale)
        self._writes_succeeded()
        self._observe(model, updates, ranked)

    def _observe(
        self, model: ServingModel, updates: dict[str, UserUpdate], ranked: list[Ranked]
    ) -> None:
        """The batch's metrics: one observation per event for freshness, one increment per
        counter and label otherwise (a prometheus_client call costs ~1 µs of Python)."""
        written = time.time()
        observe = self._metrics.freshness.observe
        events = 0
        for update in updates.values():
            for ts in update.event_times:
                observe(max(0.0, written - ts))
            events += len(update.event_times)
        items = [item for update in updates.values() for item in update.items]
        self._metrics.actions.inc(events)
        self._metrics.unknown_items.inc(int((model.item_rows(items) < 0).sum()))
        for source, count in Counter(r.source for r in ranked).items():
            self._metrics.lists.labels(source).inc(count)

    @contextmanager
    def _stage(self, stage: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._metrics.errors.labels(stage).inc()
            if stage in _WRITE_STAGES and isinstance(exc, RedisError | OSError):
                self._writes_failed(stage, exc)
            raise

    def _writes_failed(self, stage: str, exc: Exception) -> None:
        """Redis refuses our writes (out of memory, a read-only replica, gone): not ready."""
        if self._writable.is_set():
            logger.error(
                "Redis %s write failed, not ready until a batch is written: %r", stage, exc
            )
        self._writable.clear()
        self._metrics.redis_writable.set(0)

    def _writes_succeeded(self) -> None:
        if not self._writable.is_set():
            logger.info("Redis accepts writes again: ready")
        self._writable.set()
        self._metrics.redis_writable.set(1)


_WRITE_STAGES = frozenset({"history", "write"})


def stamped(
    ranked: Ranked, model: ServingModel, trigger: UserAction, computed_at: datetime
) -> RecommendationList:
    return RecommendationList(
        model_version=model.version,
        computed_at=computed_at,
        event_id=trigger.event_id,
        event_ts=trigger.ts,
        items=ranked.items,
        scores=ranked.scores,
    )


def stores(
    settings: WorkerSettings, redis: RedisClient, metrics: WorkerMetrics
) -> tuple[HistoryStore, FencedLists]:
    """The fenced history store and list writer, as the live handler and a rebuild use them."""
    keys = settings.common.redis.keys
    history = HistoryStore(
        redis,
        keys,
        max_len=settings.history_len,
        ttl_s=settings.history_ttl_s,
        bad_members=metrics.bad_history_members,
    )
    return history, FencedLists(redis, keys)
