"""Rebuild histories and lists from the retained ``user-actions`` log: Redis is a rebuildable view.

:func:`rebuild` reads every partition from its beginning to the end it had when the rebuild
started (no consumer group, nothing committed), one partition after the other, and *folds* it
per user (:class:`LogFold`): each user's history members (the same bytes and effective times as
the live worker's, trimmed to the newest ``history_len`` as it goes, so memory is bounded by
users x ``history_len``), their newest event and its log position. Once a partition is read to
its end, its users are written while the next one is read (the topic is keyed by user: a user's
events are on one partition; a user who gets events after being written, from a partition read
later, is written again, whole, ``LogFold.take``). The writes go a thousand users at a time, as
a pipeline: one script call writes their whole histories (``HistoryStore.rebuild``: added even
behind the fence, as adds are idempotent and a fence written between a data loss and its
detection must not hide older events) while the batch is scored at once from the folded
histories in a thread of its own (``reco_worker.scoring.score``, the live worker's code; a user
whose history Redis holds more of is read back and scored again as stored); then the lists are
encoded, and written fenced at each user's newest position while the next batch is prepared and
scored. A rebuild running next to live workers never overwrites a newer list, and running it on
intact data changes nothing; a list from the *same* position is replaced (it may have been
computed over a partial history, between a data loss and its detection).

Each user is written and scored once, whatever the number of their events: the cost is one
decode and fold per event plus one score per user (docs/benchmarks.md).

Past the topic's retention: with ``archive_uri`` (the trainer's store), the snapshots the trainer
archived (``reco_common.archive``: the actions with their record coordinates) are folded first,
in order, and the topic is read from the offsets where they end, so no event is applied twice;
offsets that expired from the topic before they were archived are lost, logged and reported
(``RebuildReport.lost``). docs/worker.md, "Rebuild", says what retention that needs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from reco_common.archive import ArchivedRecord, list_snapshots, read_snapshot
from reco_common.contracts import (
    ContractError,
    UserAction,
    decode_history_members,
    decode_many,
    encode_history_member,
    encode_recommendations,
)
from reco_common.kafka import start_client
from reco_common.redis_store import FencedLists, FencedWrite, Position, RedisClient, connect
from reco_common.settings import KafkaSettings
from reco_common.storage import ObjectStore, open_store
from reco_worker.consumer import stamped, stores
from reco_worker.history import Addition, HistoryStore, effective_ts
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import load_serving_model
from reco_worker.scoring import Histories, Policy, Ranked, ServingModel, score
from reco_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

READ_CHUNK = 50_000
DECODE_RECORDS = 500
WRITE_USERS = 1_000
# The interpreter's switch interval while a rebuild runs (Python's default: 5 ms). The scoring
# thread takes the GIL back after each of its numpy calls; while the event loop folds records
# (pure Python) each take waited up to the whole interval: a batch scored during the read took
# ~5x its CPU time in wall time, and the writes fell behind the read (1M events, load 7-9: 26 s
# of writes left after the read at 5 ms, 12 s at 0.5 ms; docs/benchmarks.md).
SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True, slots=True)
class RebuildReport:
    events: int
    skipped: int
    users: int
    stale_lists: int
    seconds: float
    lists_seconds: float  # of ``seconds``: the writes left once the log was read to its end
    archived: int = 0  # of ``events``: replayed from the archive's snapshots
    lost: dict[int, int] = field(default_factory=dict)  # per partition: neither archived nor kept

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class _UserLog:
    members: dict[bytes, float]
    last: UserAction
    partition: int
    offset: int
    pending: bool = True  # folded events not yet handed to the writer (``LogFold.take``)


class LogFold:
    """The log folded per user, in log order (see the module docstring): what a clean pass of
    the live worker leaves in each history, with the newest event and its position."""

    def __init__(
        self, *, max_len: int, max_future_skew_s: float, users: Collection[str] = ()
    ) -> None:
        self.users: dict[str, _UserLog] = {}
        self.events = 0
        self.skipped = 0
        self._max_len = max_len
        self._skew = max_future_skew_s
        self._wanted = frozenset(users)
        self._pending: list[str] = []  # users whose log may be pending, in their first order

    def take(self, finished: Collection[int] | None = None) -> list[str]:
        """The users with events folded since they were last taken whose newest event is on a
        ``finished`` partition (read to its end), all of them when ``None``; they are no
        longer pending. A user taken before the log is read to its end may get more events
        (on a partition read later): they are pending again, and taken again, whole."""
        taken, kept = [], []
        for user_id in self._pending:
            log = self.users[user_id]
            if not log.pending:
                continue
            if finished is None or log.partition in finished:
                log.pending = False
                taken.append(user_id)
            else:
                kept.append(user_id)
        self._pending = kept
        return taken

    def add_records(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Fold records of the topic; those the live worker refuses (undecodable, keyed by
        another user) are counted as skipped."""
        if self._wanted:
            records = [
                r for r in records if (r.key or b"").decode(errors="replace") in self._wanted
            ]
        for start in range(0, len(records), DECODE_RECORDS):
            self._add_decoded(records[start : start + DECODE_RECORDS])

    def _add_decoded(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Records decoded at once (``decode_many``: the same events and errors as the live
        consumer's ``decode``, about half the cost), then folded (``add`` inlined: this runs
        once per event). A few hundred at a time: most events die young, as the garbage
        collector prefers (a whole chunk's survived into its oldest generation)."""
        events = decode_many(UserAction, [r.value for r in records])
        users, pending, skew, limit = self.users, self._pending, self._skew, 2 * self._max_len
        for record, event in zip(records, events, strict=True):
            if isinstance(event, ContractError):
                self.skipped += 1
                continue
            user_id = event.user_id
            if record.key != user_id.encode():
                self.skipped += 1
                continue
            ts = effective_ts(event, record_ts_ms=record.timestamp, max_future_skew_s=skew)
            self.events += 1
            log = users.get(user_id)
            if log is None:
                log = users[user_id] = _UserLog({}, event, record.partition, record.offset)
                pending.append(user_id)
            else:
                log.last, log.partition, log.offset = event, record.partition, record.offset
                if not log.pending:
                    log.pending = True
                    pending.append(user_id)
            log.members[encode_history_member(event)] = ts
            if len(log.members) > limit:
                log.members = dict(_newest(log.members, self._max_len))

    def add_archived(self, records: Iterable[ArchivedRecord]) -> None:
        """Fold records of a snapshot, as ``add_records`` folds the topic's."""
        for record in records:
            event = record.action
            if self._wanted and event.user_id not in self._wanted:
                continue
            if record.key != event.user_id.encode():
                self.skipped += 1
                continue
            ts = effective_ts(event, record_ts_ms=record.timestamp_ms, max_future_skew_s=self._skew)
            self.add(event, record.partition, record.offset, ts)

    def add(self, event: UserAction, partition: int, offset: int, ts: float) -> None:
        """Fold one event at its log position, with its effective time."""
        self.events += 1
        log = self.users.get(event.user_id)
        if log is None:
            log = self.users[event.user_id] = _UserLog({}, event, partition, offset)
            self._pending.append(event.user_id)
        else:
            log.last, log.partition, log.offset = event, partition, offset
            if not log.pending:
                log.pending = True
                self._pending.append(event.user_id)
        log.members[encode_history_member(event)] = ts
        if len(log.members) > 2 * self._max_len:
            log.members = dict(_newest(log.members, self._max_len))

    def addition(self, user_id: str) -> Addition:
        """The user's history as the live worker would leave it (oldest first), at the
        position of their newest event."""
        log = self.users[user_id]
        return Addition(
            Position(log.partition, log.offset), dict(_newest(log.members, self._max_len))
        )


def _newest(members: dict[bytes, float], n: int) -> list[tuple[bytes, float]]:
    """The ``n`` newest members by (time, member), as Redis trims a history, oldest first."""
    ordered = sorted(zip(members.values(), members, strict=True))[-n:]
    return [(member, ts) for ts, member in ordered]


def _histories(users: list[str], additions: dict[str, Addition]) -> Histories:
    """The folded histories of ``users`` as one batch (their members decoded at once)."""
    members = [m for u in users for m in additions[u].members]
    ts = [t for u in users for t in additions[u].members.values()]
    lengths = [len(additions[u].members) for u in users]
    return Histories.joined(users, lengths, decode_history_members(members, ts))


@dataclass(frozen=True, slots=True)
class Rebuilder:
    """What a rebuild writes with: the worker's stores, model and policy."""

    history: HistoryStore
    lists: FencedLists
    model: ServingModel
    policy: Policy
    max_future_skew_s: float
    archive: ObjectStore | None = None

    async def run(self, kafka: KafkaSettings, *, users: Collection[str] = ()) -> RebuildReport:
        """Rebuild ``users`` (all when empty) from the archive and the log; see the module
        docstring."""
        with _switch_interval(SWITCH_INTERVAL_S):
            return await self._run(kafka, users=users)

    async def _run(self, kafka: KafkaSettings, *, users: Collection[str]) -> RebuildReport:
        started = time.perf_counter()
        fold = LogFold(
            max_len=self.history.max_len, max_future_skew_s=self.max_future_skew_s, users=users
        )
        archived_to: dict[int, int] = {}
        if self.archive is not None:
            archived_to = await asyncio.to_thread(
                _fold_archive, fold, self.archive, kafka.topics.user_actions
            )
        archived = fold.events
        lost: dict[int, int] = {}
        ready: asyncio.Queue[list[str] | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as tasks:
            writing = tasks.create_task(self._write_ready(fold, ready))
            finished: set[int] = set()
            async for read in _read_log(kafka, after=archived_to, lost=lost):
                for start in range(0, len(read.records), DECODE_RECORDS):
                    fold.add_records(read.records[start : start + DECODE_RECORDS])
                    await asyncio.sleep(0)  # let the writer hand Redis and the scorer work
                if read.ended:
                    finished.add(read.partition)
                    ready.put_nowait(fold.take(finished))
            read_at = time.perf_counter()
            ready.put_nowait(fold.take())
            ready.put_nowait(None)
        stale = writing.result()
        done = time.perf_counter()
        report = RebuildReport(
            fold.events,
            fold.skipped,
            len(fold.users),
            stale,
            done - started,
            done - read_at,
            archived,
            lost,
        )
        logger.info("rebuilt %d users from %d events: %s", len(fold.users), fold.events, report)
        return report

    async def write(self, fold: LogFold) -> int:
        """Write every user of ``fold`` that is pending (all of a fold not written yet);
        returns how many lists were stale."""
        ready: asyncio.Queue[list[str] | None] = asyncio.Queue()
        ready.put_nowait(fold.take())
        ready.put_nowait(None)
        return await self._write_ready(fold, ready)

    async def _write_ready(self, fold: LogFold, ready: asyncio.Queue[list[str] | None]) -> int:
        """Histories, then one list per user, for the users put in ``ready`` (until ``None``),
        ``WRITE_USERS`` at a time: a batch is scored (in a thread, from the fold) while Redis
        writes its histories, and its lists are written while the next batch is prepared and
        scored; returns how many lists were stale. The event loop's own Python work
        (preparing a batch, encoding its lists) never runs while the scoring does: the two
        would contend for the GIL (~15 % more CPU in this phase, docs/benchmarks.md)."""
        stale = 0
        with ThreadPoolExecutor(1, thread_name_prefix="rebuild-score") as scorer:
            async with asyncio.TaskGroup() as tasks:
                listing: asyncio.Task[int] | None = None
                while (users := await ready.get()) is not None:
                    for start in range(0, len(users), WRITE_USERS):
                        chunk = users[start : start + WRITE_USERS]
                        scored = await self._scored(fold, chunk, scorer)
                        writes = self._lists(scored)
                        stale += await listing if listing is not None else 0
                        listing = tasks.create_task(
                            self.lists.replace(self.model.name, writes, or_equal=True)
                        )
                stale += await listing if listing is not None else 0
        return stale

    async def _scored(self, fold: LogFold, chunk: list[str], scorer: Executor) -> _Scored:
        """Write the users' histories and score them, at once: the scores come from the fold,
        except for a user whose stored history holds more (a live worker added to it, older
        members survived), scored again as stored."""
        additions = {u: fold.addition(u) for u in chunk}
        triggers = [fold.users[u].last for u in chunk]  # as folded with ``additions``
        loop = asyncio.get_running_loop()
        scoring = loop.run_in_executor(
            scorer, score, self.model, _histories(chunk, additions), self.policy
        )
        try:
            stored = await self.history.rebuild(additions)
        finally:
            ranked = await scoring  # a thread cannot be cancelled: never leave one behind
        if stored:
            again = list(stored)
            rescored = await loop.run_in_executor(
                scorer, score, self.model, Histories.of_columns(list(stored.items())), self.policy
            )
            by_user = dict(zip(chunk, ranked, strict=True)) | dict(
                zip(again, rescored, strict=True)
            )
            ranked = [by_user[u] for u in chunk]
        return _Scored(chunk, additions, triggers, ranked)

    def _lists(self, scored: _Scored) -> dict[str, FencedWrite]:
        """The batch's lists, each to be fenced at its user's newest position (a list from the
        same position is replaced too)."""
        computed_at = datetime.now(UTC)
        return {
            u: FencedWrite(
                encode_recommendations(stamped(r, self.model, trigger, computed_at)),
                scored.additions[u].position,
            )
            for u, trigger, r in zip(scored.users, scored.triggers, scored.ranked, strict=True)
        }


@dataclass(frozen=True, slots=True)
class _Scored:
    """A batch whose histories are written, with its lists ranked."""

    users: list[str]
    additions: dict[str, Addition]
    triggers: list[UserAction]  # per user, the newest event folded into its addition
    ranked: list[Ranked]


@contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    """The interpreter's thread switch interval set to ``seconds``, then restored."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def rebuilder(
    settings: WorkerSettings, redis: RedisClient, model: ServingModel, metrics: WorkerMetrics
) -> Rebuilder:
    """A rebuilder writing with the worker's own stores and policy."""
    history, lists = stores(settings, redis, metrics)
    archive = (
        open_store(settings.archive_uri, s3=settings.common.s3) if settings.archive_uri else None
    )
    return Rebuilder(
        history, lists, model, settings.policy, settings.max_future_skew_s, archive=archive
    )


async def rebuild_from_log(
    settings: WorkerSettings, *, model_uri: str, users: Collection[str] = ()
) -> RebuildReport:
    """``reco-worker rebuild``: load the model, rebuild from the log, close."""
    common = settings.common
    with tempfile.TemporaryDirectory(prefix="reco-rebuild-") as cache:
        model = await asyncio.to_thread(
            load_serving_model,
            model_uri,
            s3=common.s3,
            cache_dir=Path(cache),
            index_use=settings.index_use,
        )
    redis = connect(common.redis)
    try:
        work = rebuilder(settings, redis, model, WorkerMetrics.create())
        return await work.run(common.kafka, users=users)
    finally:
        await redis.aclose()


def _fold_archive(fold: LogFold, store: ObjectStore, topic: str) -> dict[int, int]:
    """Fold every snapshot of ``topic``, in order; return per partition the offset they end at
    (the topic is read from there)."""
    ends: dict[int, int] = {}
    for snapshot in list_snapshots(store, topic):
        fold.add_archived(read_snapshot(store, topic, snapshot.snapshot_id))
        for partition, (_, end) in snapshot.held.offsets.items():
            ends[partition] = max(end, ends.get(partition, 0))
    logger.info("replayed %d archived events of %s up to offsets %s", fold.events, topic, ends)
    return ends


@dataclass(frozen=True, slots=True)
class _Read:
    """Records of one partition, in offset order; ``ended``: the partition is read to the end
    it had at the start (the last chunk of it, possibly empty)."""

    partition: int
    records: list[ConsumerRecord[bytes, bytes]]
    ended: bool = False


async def _read_log(
    kafka: KafkaSettings, *, after: dict[int, int], lost: dict[int, int]
) -> AsyncIterator[_Read]:
    """Every ``user-actions`` record from ``after`` (per partition; else its beginning) up to
    the end offsets at start, one partition after the other (the others paused), in chunks,
    in offset order: the users of a partition read to its end are written while the next is
    read. Records expired between ``after`` and what the topic retains are counted in
    ``lost``."""
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
        consumer.pause(*partitions)
        begins = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            start = after.get(tp.partition, begins[tp])
            if start < begins[tp]:
                lost[tp.partition] = begins[tp] - start
                logger.error(
                    "%s: offsets %d..%d expired from the topic and are not archived: "
                    "those events are not rebuilt",
                    tp,
                    start,
                    begins[tp],
                )
            consumer.seek(tp, max(start, begins[tp]))
        for tp in partitions:
            consumer.resume(tp)
            while await consumer.position(tp) < ends[tp]:
                fetched = await consumer.getmany(tp, timeout_ms=500, max_records=READ_CHUNK)
                chunk = [r for r in fetched.get(tp, ()) if r.offset < ends[tp]]
                if chunk:
                    yield _Read(tp.partition, chunk)
            consumer.pause(tp)
            yield _Read(tp.partition, [], ended=True)
    finally:
        await consumer.stop()
