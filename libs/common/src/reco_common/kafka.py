"""Kafka on aiokafka: the idempotent producer and the at-least-once batch consumer.

The consumer owns the delivery guarantees every service relies on:

- offsets are committed manually, only after a batch was handled and its rejects dead-lettered;
- a record that does not decode, or that the handler rejects, goes to ``<topic>.dlq`` with the
  original topic/partition/offset and the reason as headers; consumption continues. The send has
  its own bounded retries (:class:`DeadLetterPolicy`), outside the handler's: a record too large
  for the dead-letter topic is sent again cut to a prefix (``x-original-size`` says so), and one
  that still cannot be sent is *parked* — logged with its coordinates (it stays in the source
  topic at that offset) and counted — so that one record never blocks its partition;
- a handler failure (e.g. Redis down) is retried a bounded number of times, then the batch is
  sought back and fetched again: nothing is committed that was not processed;
- on a rebalance, revocation waits for the batch in hand to finish and commit;
- a batch can be bounded in time (:class:`GroupTimeouts`), so that a healthy batch always ends
  before the group gives its partitions to another member.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)
from msgspec import Struct
from prometheus_client import Gauge
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from reco_common.contracts import ContractError, DlqHeader, Topics, decode_many, encode
from reco_common.metrics import ConsumerMetrics
from reco_common.settings import KafkaSettings

logger = logging.getLogger(__name__)

# A topic is replicated on this many brokers at most (fewer on a smaller cluster).
MAX_REPLICATION = 3

T = TypeVar("T", bound=Struct)


class KafkaUnavailableError(RuntimeError):
    """The brokers named by ``RECO_KAFKA_BOOTSTRAP`` did not answer at start."""


@dataclass(frozen=True, slots=True)
class Delivery(Generic[T]):
    """A decoded event with the record it came from."""

    record: ConsumerRecord[bytes, bytes]
    event: T


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record the handler refuses for good; it is dead-lettered with ``reason``."""

    record: ConsumerRecord[bytes, bytes]
    reason: str
    error_type: str = "rejected"


Handler = Callable[[Sequence[Delivery[T]]], Awaitable[Sequence[Rejection]]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a failing batch is retried in place before it is sought back and refetched."""

    attempts: int = 5
    initial_wait_s: float = 0.05
    max_wait_s: float = 2.0


@dataclass(frozen=True, slots=True)
class DeadLetterPolicy:
    """Bounded attempts to dead-letter one record (about 7 s at most), and what an oversized keeps."""

    attempts: int = 3
    timeout_s: float = 2.0
    truncated_bytes: int = 1024


_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or (
        isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))
    )


@dataclass(frozen=True, slots=True)
class GroupTimeouts:
    """How long one batch may take, and how soon the group notices a silent member.

    ``batch_s`` bounds a batch, retries included (the attempt in progress is cancelled, the batch
    sought back). The group waits that long plus ``margin_s`` for the batch in hand when it
    rebalances (rebalance timeout and max poll interval; the margin covers the dead-letter stage,
    bounded on its own by :class:`DeadLetterPolicy`), so a healthy batch commits before its
    partitions move. A member silent for ``session_s`` (paused, partitioned, stalled) is evicted
    and its partitions reassigned; what it writes afterwards must be fenced by the store (see
    ``reco_common.redis_store``), and its commit fails. ``batch_s=None`` leaves batches unbounded,
    allows five minutes between polls (the controller waits for a rollout inside a batch) and keeps
    the client's default rebalance timeout (the session timeout).
    """

    batch_s: float | None = None
    session_s: float = 10.0
    heartbeat_s: float = 3.0
    margin_s: float = 10.0

    @property
    def poll_interval_ms(self) -> int:
        return 300_000 if self.batch_s is None else int((self.batch_s + self.margin_s) * 1000)

    def consumer_config(self) -> dict[str, int]:
        session_ms = int(self.session_s * 1000)
        return {
            "session_timeout_ms": session_ms,
            "heartbeat_interval_ms": int(self.heartbeat_s * 1000),
            "max_poll_interval_ms": self.poll_interval_ms,
            "rebalance_timeout_ms": session_ms if self.batch_s is None else self.poll_interval_ms,
        }


START_RETRY_MAX_WAIT_S = 5.0
"""Longest pause between two attempts to reach Kafka at start."""


def _unavailable(settings: KafkaSettings, exc: Exception) -> KafkaUnavailableError:
    return KafkaUnavailableError(
        f"Kafka at RECO_KAFKA_BOOTSTRAP={settings.bootstrap!r} is unreachable: {exc}"
    )


async def start_client(
    settings: KafkaSettings,
    *,
    start: Callable[[], Awaitable[object]],
    close: Callable[[], Awaitable[object]],
) -> None:
    """Start an aiokafka client; when no broker answers (or none accepts the principal), retry
    for ``settings.start_timeout_s``, then release it and raise an error that names
    ``RECO_KAFKA_BOOTSTRAP`` (at start, not in the first request). The retries are for brokers
    and principals that come up with the pod (a cluster's first minutes); 0 fails at once."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(KafkaConnectionError),
        stop=stop_after_delay(settings.start_timeout_s),
        wait=wait_exponential(multiplier=0.5, max=START_RETRY_MAX_WAIT_S),
        before_sleep=lambda state: logger.warning(
            "Kafka at %s not reachable yet (attempt %d, retrying for up to %.0f s): %s",
            settings.bootstrap,
            state.attempt_number,
            settings.start_timeout_s,
            state.outcome.exception() if state.outcome else None,
        ),
        reraise=True,
    )
    try:
        await retrying(start)
    except KafkaConnectionError as exc:
        await close()
        raise _unavailable(settings, exc) from exc
    except Exception:
        # Any other refusal at start (e.g. a principal without Write on any topic is refused
        # an idempotent producer's id): the half-started client is released too.
        await close()
        raise


@contextlib.asynccontextmanager
async def admin_client(settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client, closed on exit."""
    admin = AIOKafkaAdminClient(**settings.client_options(), client_id=settings.client_id)
    await start_client(settings, start=admin.start, close=admin.close)
    try:
        yield admin
    finally:
        await admin.close()


async def start_producer(settings: KafkaSettings, *, linger_ms: int = 2) -> AIOKafkaProducer:
    """An idempotent producer (acks=all), started; fails fast naming the bootstrap setting."""
    producer = AIOKafkaProducer(
        **settings.client_options(),
        client_id=settings.client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        request_timeout_ms=int(settings.request_timeout_s * 1000),
    )
    await start_client(settings, start=producer.start, close=producer.stop)
    return producer


async def publish(producer: AIOKafkaProducer, topic: str, key: str, event: Struct) -> None:
    """Send one contract event and wait until the brokers acknowledged it."""
    await producer.send_and_wait(topic, encode(event), key=key.encode())


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """How a topic of the contract is created: its partitions, replicas and in-sync minimum."""

    name: str
    partitions: int
    replication: int
    min_insync: int

    def new_topic(self) -> NewTopic:
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication,
            topic_configs={"min.insync.replicas": str(self.min_insync)},
        )


def topic_spec(
    name: str, *, partitions: int, brokers: int, replication: int | None = None
) -> TopicSpec:
    """The spec of ``name`` on a cluster of ``brokers``.

    Replicated on every broker up to :data:`MAX_REPLICATION` (``replication`` overrides the
    choice: ``RECO_KAFKA_REPLICATION_FACTOR``). From three replicas on, a write needs two of
    them (``acks=all`` with ``min.insync.replicas=2``): an acknowledged record survives the loss
    of any one broker, and one broker down blocks no writes. Fewer replicas cannot have both, so
    they keep writes available (``min.insync.replicas=1``): one broker in development.
    """
    if partitions < 1 or brokers < 1:
        raise ValueError(f"{name}: {partitions} partitions on {brokers} brokers")
    factor = replication or min(MAX_REPLICATION, brokers)
    return TopicSpec(
        name=name,
        partitions=partitions,
        replication=factor,
        min_insync=2 if factor >= 3 else 1,
    )


async def ensure_topics(
    settings: KafkaSettings, *names: str, partitions: Mapping[str, int] | None = None
) -> None:
    """Create the named topics of the contract when they do not exist yet (:func:`topic_spec`,
    with the cluster's broker count as it is now), each with its partition count
    (:meth:`Topics.partitions`, or ``partitions[name]`` when given).

    The one place topics are made: every process calls it for the topics it uses, before using
    them, so whichever starts first creates each topic, always the same way; the brokers of
    deploy/k8s and of the dev stack's 3-node cluster create none themselves. A topic that exists
    is left as it is (its partition count cannot change without moving users, docs/scaling.md).
    """
    given = partitions or {}
    counts = {name: given.get(name) or settings.topics.partitions(name) for name in names}
    async with admin_client(settings) as admin:
        existing = set(await admin.list_topics())
        brokers = len((await admin.describe_cluster())["brokers"])
        missing = [
            topic_spec(name, partitions=n, brokers=brokers, replication=settings.replication_factor)
            for name, n in counts.items()
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics([spec.new_topic() for spec in missing])
            _raise_for_topic_errors(response.topic_errors)
            await _until_served(admin, missing, timeout_s=settings.request_timeout_s)
            logger.info("topics ensured: %s", missing)
        kept = [name for name in counts if name in existing]
        if kept:
            _warn_if_counts_differ(counts, await admin.describe_topics(kept))


def _warn_if_counts_differ(
    counts: Mapping[str, int], described: Sequence[Mapping[str, Any]]
) -> None:
    """An existing topic keeps its partitions (they cannot change without moving users); say so
    when they are not the contract's, e.g. ``user-actions`` made with the old default of 3."""
    for topic in described:
        name, actual = topic["topic"], len(topic["partitions"])
        if topic["error_code"] == 0 and actual != counts[name]:
            logger.warning(
                "topic %s has %d partitions, not the %d of the contract: it keeps them (at most "
                "%d consumers of a group share it; docs/scaling.md, 'Partitions and replication')",
                name,
                actual,
                counts[name],
                actual,
            )


async def _until_served(
    admin: AIOKafkaAdminClient, specs: Sequence[TopicSpec], *, timeout_s: float
) -> None:
    """Wait until the brokers' metadata serves every partition of ``specs`` with a leader: the
    controller answers once a topic is decided, a broker learns of it a moment later (a client
    would otherwise start on an unknown topic). Late is logged, not fatal: clients retry."""
    names = [spec.name for spec in specs]
    expected = {spec.name: spec.partitions for spec in specs}
    try:
        async with asyncio.timeout(timeout_s):
            while True:  # polled: the brokers have no notification for this
                if _served(await admin.describe_topics(names)) == expected:
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        logger.warning("topics %s not served yet after %g s; going on", names, timeout_s)


def _served(described: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Topic → partition count, of the topics whose partitions all have a leader."""
    return {
        t["topic"]: len(t["partitions"])
        for t in described
        if t["error_code"] == 0 and all(p["leader"] >= 0 for p in t["partitions"])
    }


def _raise_for_topic_errors(topic_errors: Sequence[tuple[Any, ...]]) -> None:
    """aiokafka returns each topic's outcome in the response; raise for the failed ones. One
    another process created meanwhile is no failure."""
    for name, code, *message in topic_errors:
        error = for_code(code)
        if code and error is not TopicAlreadyExistsError:
            raise error(f"creating topic {name}: {message[0] if message else ''}")


class _WaitForBatch(ConsumerRebalanceListener):  # type: ignore[misc]
    """Revocation waits until the batch in hand is handled and committed; the revoked
    partitions' lag series go with them (their new owner reports them: a stale value left
    here would be counted beside the new owner's)."""

    def __init__(self, lock: asyncio.Lock, lag: Gauge) -> None:
        self._lock = lock
        self._lag = lag

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            logger.info("partitions revoked: %s", sorted(str(tp) for tp in revoked))
            for tp in revoked:
                with contextlib.suppress(KeyError):  # no batch came from it here
                    self._lag.remove(str(tp.partition))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        logger.info("partitions assigned: %s", sorted(str(tp) for tp in assigned))


class EventConsumer(Generic[T]):
    """Consume ``topic`` as ``model`` events in batches and hand them to ``handler``.

    Use ``start()``, then ``run(stop)`` until ``stop`` is set, then ``stop()``.
    """

    def __init__(
        self,
        *,
        settings: KafkaSettings,
        topic: str,
        group_id: str,
        model: type[T],
        handler: Handler[T],
        producer: AIOKafkaProducer,
        metrics: ConsumerMetrics,
        max_records: int = 500,
        fetch_max_wait_ms: int = 5,
        retry: RetryPolicy | None = None,
        timeouts: GroupTimeouts | None = None,
        dead_letters: DeadLetterPolicy | None = None,
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._model = model
        self._handler = handler
        self._producer = producer
        self._metrics = metrics
        self._max_records = max_records
        self._retry = retry or RetryPolicy()
        self._timeouts = timeouts or GroupTimeouts()
        self._dead_letters = dead_letters or DeadLetterPolicy()
        self._lock = asyncio.Lock()
        self._paused = False
        self._consumer = AIOKafkaConsumer(
            **settings.client_options(),
            client_id=settings.client_id,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
            **self._timeouts.consumer_config(),
            request_timeout_ms=int(settings.request_timeout_s * 1000) + 30_000,
        )

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self._consumer

    async def start(self) -> None:
        await start_client(self._settings, start=self._consumer.start, close=self._consumer.stop)
        self._consumer.subscribe(
            [self._topic], listener=_WaitForBatch(self._lock, self._metrics.lag)
        )

    async def stop(self) -> None:
        """Leave the group; call after ``run`` returned (the batch in hand is committed).

        Not under the batch lock: leaving the group revokes the partitions, and the revocation
        listener takes that lock itself.
        """
        await self._consumer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, handle and commit batches until ``stop`` is set."""
        while not stop.is_set():
            if self._paused:
                self._consumer.pause(*self._consumer.assignment())  # new partitions too
            batches = await self._consumer.getmany(timeout_ms=100, max_records=self._max_records)
            if not batches:
                continue
            if self._paused:  # fetched while the pause began: fetch it again afterwards
                self._seek_back(batches)
                continue
            async with self._lock:
                await self.process(batches)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Handle nothing while the body runs (from the end of the batch in hand). The member
        keeps polling, so its heartbeats and partitions go on; fetching resumes on exit."""
        async with self._lock:
            self._paused = True
            self._consumer.pause(*self._consumer.assignment())
        try:
            yield
        finally:
            self._paused = False
            self._consumer.resume(*self._consumer.assignment())

    async def process(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        """Handle one fetched batch; commit it, or seek back so that it is fetched again."""
        records = [r for part in batches.values() for r in part]
        self._metrics.batch_size.observe(len(records))
        deliveries, rejections = self._decode(records)
        try:
            async with asyncio.timeout(self._timeouts.batch_s):
                handler_rejections = await self._handle_with_retries(deliveries)
        except Exception:
            logger.exception("batch of %d records failed; seeking back to refetch it", len(records))
            self._metrics.batch_failures.inc()
            self._seek_back(batches)
            return
        await self._dead_letter([*rejections, *handler_rejections])
        await self._commit(batches)
        self._metrics.events.inc(len(records))
        self._record_lag(batches)

    async def _handle_with_retries(self, deliveries: list[Delivery[T]]) -> Sequence[Rejection]:
        if not deliveries:
            return []
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts),
            wait=wait_exponential(
                multiplier=self._retry.initial_wait_s, max=self._retry.max_wait_s
            ),
            retry=retry_if_exception_type(Exception),
            before_sleep=self._log_retry,
            reraise=True,
        )
        return await retrying(self._handler, deliveries)

    def _decode(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> tuple[list[Delivery[T]], list[Rejection]]:
        """The batch decoded at once (``decode_many``: the same values and errors as ``decode``
        of each, at about half its cost per record)."""
        deliveries: list[Delivery[T]] = []
        rejections: list[Rejection] = []
        decoded = decode_many(self._model, [record.value for record in records])
        for record, event in zip(records, decoded, strict=True):
            if isinstance(event, ContractError):
                rejections.append(Rejection(record, event.reason, "invalid"))
            else:
                deliveries.append(Delivery(record, event))
        return deliveries, rejections

    async def _dead_letter(self, rejections: Sequence[Rejection]) -> None:
        """Dead-letter each rejection, cut or parked if need be; never raises, never blocks."""
        await asyncio.gather(*(self._dead_letter_one(r) for r in rejections))

    async def _dead_letter_one(self, rejection: Rejection) -> None:
        record = rejection.record
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        try:
            try:
                await self._send_dead_letter(rejection, record.value, _dlq_headers(rejection))
                cut = ""
            except _TOO_LARGE:
                size = len(record.value or b"")
                headers = [*_dlq_headers(rejection), (DlqHeader.ORIGINAL_SIZE.value, b"%d" % size)]
                value = (record.value or b"")[: self._dead_letters.truncated_bytes]
                await self._send_dead_letter(rejection, value, headers)
                cut = f" (too large: value cut from {size} bytes)"
        except (KafkaError, TimeoutError) as exc:
            logger.error(
                "could not dead-letter %s (%s): parked, it stays in the topic at that offset; "
                "moving on: %r",
                where,
                rejection.reason,
                exc,
            )
            self._metrics.dead_letters_parked.labels(rejection.error_type).inc()
            return
        logger.warning("dead-lettered %s%s: %s", where, cut, rejection.reason)
        self._metrics.dead_lettered.labels(rejection.error_type).inc()

    async def _send_dead_letter(
        self, rejection: Rejection, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        policy, record = self._dead_letters, rejection.record
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception(_retriable),
            reraise=True,
        )

        async def send_once() -> None:
            async with asyncio.timeout(policy.timeout_s):
                await self._producer.send_and_wait(
                    Topics.dlq(record.topic), value, key=record.key, headers=headers
                )

        await retrying(send_once)

    async def _commit(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        offsets = {tp: part[-1].offset + 1 for tp, part in batches.items()}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The partitions moved to another member, which redelivers: harmless, logged.
            logger.warning("commit of %s failed, events will be redelivered: %s", offsets, exc)
            self._metrics.commit_failures.inc()

    def _seek_back(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for tp, part in batches.items():
            if tp in self._consumer.assignment():
                self._consumer.seek(tp, part[0].offset)

    def _record_lag(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        for tp, part in batches.items():
            highwater = self._consumer.highwater(tp)
            if highwater is not None:
                self._metrics.lag.labels(str(tp.partition)).set(highwater - part[-1].offset - 1)

    def _log_retry(self, state: object) -> None:
        self._metrics.handler_retries.inc()
        logger.warning("batch handler failed, retrying: %s", getattr(state, "outcome", None))


def _dlq_headers(rejection: Rejection) -> list[tuple[str, bytes]]:
    record = rejection.record
    return [
        (DlqHeader.TOPIC.value, record.topic.encode()),
        (DlqHeader.PARTITION.value, str(record.partition).encode()),
        (DlqHeader.OFFSET.value, str(record.offset).encode()),
        (DlqHeader.ERROR.value, rejection.reason.encode()[:4096]),
        (DlqHeader.ERROR_TYPE.value, rejection.error_type.encode()),
    ]
