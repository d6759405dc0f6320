"""Rebuild histories and lists from the retained ``user-actions`` log: Redis is a rebuildable view.

:func:`rebuild` reads every partition from its beginning to the end it had when the rebuild
started (no consumer group, nothing committed), in chunks of records. Each chunk is coalesced per
user, as a live batch is, and appended to the histories by the worker's history script (one call
per chunk, no trim or read-back: the final pass trims; behind the fence too, as adds are idempotent and a fence written between
a data loss and its detection must not hide the older events). Then every user it met gets one list, computed from the
rebuilt history with the given model and written fenced at the user's newest log position —
scored in batches, like the live worker. Both writes are fenced, so a rebuild running next to
live workers never overwrites a newer list, and running it on intact data changes nothing; a
list from the *same* position is replaced (it may have been computed over a partial history,
between a data loss and its detection).

Limits: events older than the topic's retention are gone from the log; the trainer's snapshots
in object storage are not read back yet (docs/worker.md, "Rebuild").
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Collection, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from redis.asyncio import Redis

from reco_common.contracts import ContractError, UserAction, decode, encode
from reco_common.kafka import Delivery, start_client
from reco_common.redis_store import FencedLists, FencedWrite, Position, connect
from reco_common.settings import KafkaSettings
from reco_worker.consumer import coalesce, stamped
from reco_worker.history import Addition, HistoryStore
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import load_serving_model
from reco_worker.scoring import Policy, ServingModel, recommend
from reco_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

READ_CHUNK = 20_000
SCORE_BATCH = 500


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    skipped: int
    users: int
    stale_lists: int
    seconds: float
    lists_seconds: float  # of ``seconds``: scoring and writing the lists, after the histories

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class Rebuilder:
    """What a rebuild writes with: the worker's stores, model and policy."""

    history: HistoryStore
    lists: FencedLists
    model: ServingModel
    policy: Policy
    max_future_skew_s: float

    async def run(self, kafka: KafkaSettings, *, users: Collection[str] = ()) -> RebuildReport:
        """Rebuild ``users`` (all when empty) from the log; see the module docstring."""
        started = time.perf_counter()
        wanted = frozenset(users)
        last: dict[str, tuple[UserAction, Position]] = {}
        events = skipped = 0
        async with _OneInFlight() as appends:
            async for records in _read_log(kafka):
                deliveries, bad = _decoded(records, wanted)
                events, skipped = events + len(deliveries), skipped + bad
                batch = coalesce(deliveries, max_future_skew_s=self.max_future_skew_s)
                skipped += len(batch.rejections)
                additions = {
                    u: Addition(up.position, up.members) for u, up in batch.updates.items()
                }
                # In flight while the next chunk is read: rebuilding appends commute.
                await appends.submit(self.history.append_and_read(additions, rebuilding=True))
                last.update({u: (up.last, up.position) for u, up in batch.updates.items()})
        histories_done = time.perf_counter()
        stale = await self._write_lists(last)
        done = time.perf_counter()
        report = RebuildReport(
            events, skipped, len(last), stale, done - started, done - histories_done
        )
        logger.info("rebuilt %d users from %d events: %s", len(last), events, report)
        return report

    async def _write_lists(self, last: dict[str, tuple[UserAction, Position]]) -> int:
        """Score every user once from the rebuilt history; a batch's write is in flight while
        the next batch is read and scored."""
        stale = 0

        async def write(writes: dict[str, FencedWrite]) -> None:
            nonlocal stale
            stale += await self.lists.replace(self.model.name, writes, or_equal=True)

        users = list(last)
        async with _OneInFlight() as writing:
            for start in range(0, len(users), SCORE_BATCH):
                chunk = users[start : start + SCORE_BATCH]
                histories = await self.history.append_and_read(
                    {u: Addition(last[u][1], {}) for u in chunk}
                )
                ranked = await asyncio.to_thread(
                    recommend, self.model, [(u, histories[u]) for u in chunk], self.policy
                )
                computed_at = datetime.now(UTC)
                await writing.submit(
                    write(
                        {
                            u: FencedWrite(
                                encode(stamped(r, self.model, last[u][0], computed_at)),
                                last[u][1],
                            )
                            for u, r in zip(chunk, ranked, strict=True)
                        }
                    )
                )
        return stale


class _OneInFlight:
    """Runs one awaitable at a time in the background: ``submit`` waits for the previous one
    (raising its error), then starts the next; leaving the block waits for the last."""

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None

    async def submit(self, work: Coroutine[object, object, object]) -> None:
        await self._drain()
        self._task = asyncio.ensure_future(work)

    async def _drain(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task

    async def __aenter__(self) -> _OneInFlight:
        return self

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            await self._drain()
        elif self._task is not None:  # failing already: stop the work in flight, quietly
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def rebuilder(
    settings: WorkerSettings, redis: Redis, model: ServingModel, metrics: WorkerMetrics
) -> Rebuilder:
    """A rebuilder writing with the worker's own stores and policy."""
    history, lists = stores(settings, redis, metrics)
    return Rebuilder(history, lists, model, settings.policy, settings.max_future_skew_s)


def stores(
    settings: WorkerSettings, redis: Redis, metrics: WorkerMetrics
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


async def rebuild_from_log(
    settings: WorkerSettings, *, model_uri: str, users: Collection[str] = ()
) -> RebuildReport:
    """``reco-worker rebuild``: load the model, rebuild from the log, close."""
    common = settings.common
    with tempfile.TemporaryDirectory(prefix="reco-rebuild-") as cache:
        model = await asyncio.to_thread(
            load_serving_model, model_uri, s3=common.s3, cache_dir=Path(cache)
        )
    redis = connect(common.redis)
    try:
        work = rebuilder(settings, redis, model, WorkerMetrics.create())
        return await work.run(common.kafka, users=users)
    finally:
        await redis.aclose()


def _decoded(
    records: list[ConsumerRecord[bytes, bytes]], wanted: frozenset[str]
) -> tuple[list[Delivery[UserAction]], int]:
    """The records' events (of the ``wanted`` users, if any); how many did not decode."""
    deliveries, bad = [], 0
    for record in records:
        if wanted and (record.key or b"").decode(errors="replace") not in wanted:
            continue
        try:
            deliveries.append(Delivery(record, decode(UserAction, record.value)))
        except ContractError:
            bad += 1
    return deliveries, bad


async def _read_log(kafka: KafkaSettings) -> AsyncIterator[list[ConsumerRecord[bytes, bytes]]]:
    """Every ``user-actions`` record up to the end offsets at start, in chunks, per partition in
    offset order (chunks interleave partitions; a user's events stay in order)."""
    topic = kafka.topics.user_actions
    consumer = AIOKafkaConsumer(
        topic,  # no group: every partition is assigned, nothing is committed
        **kafka.client_options(),
        client_id=f"{kafka.client_id}-rebuild",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await start_client(kafka, start=consumer.start, close=consumer.stop)
    try:
        partitions = sorted(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        while remaining := [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            fetched = await consumer.getmany(*remaining, timeout_ms=500, max_records=READ_CHUNK)
            chunk = [r for tp, part in fetched.items() for r in part if r.offset < ends[tp]]
            if chunk:
                yield chunk
    finally:
        await consumer.stop()
