"""The worker role: wires Redis, the model, the Kafka consumer and the HTTP port together.

``start`` connects (Redis client, DLQ producer) and opens the HTTP port; ``run`` loads the
first model (retrying, not ready meanwhile), then consumes ``user-actions`` in the model's
consumer group until stopped; ``stop`` stops fetching, lets the batch in hand finish, write and
commit, leaves the group and closes everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError
from threadpoolctl import threadpool_limits

from reco_common.contracts import RedisKeys, Topics, UserAction
from reco_common.kafka import EventConsumer, ensure_topics, start_producer
from reco_common.ops import OpsServer, Readiness
from reco_common.redis_store import RedisClient, check_layout, connect, mark_layout
from reco_worker.consumer import ActionHandler, stores
from reco_worker.http import create_app
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import ModelStore
from reco_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

READINESS_PING_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class _Started:
    """What ``start`` opened and ``stop`` closes."""

    redis: RedisClient
    producer: AIOKafkaProducer
    models: ModelStore
    http: OpsServer


class Worker:
    """One worker process (see the module docstring); use with ``reco_common.lifecycle.serve``."""

    def __init__(self, *, settings: WorkerSettings) -> None:
        self._settings = settings
        self._metrics = WorkerMetrics.create()
        self._stopping = asyncio.Event()
        self._run_finished = asyncio.Event()
        self._started: _Started | None = None
        self._consumer: EventConsumer[UserAction] | None = None
        self._consuming = asyncio.Event()
        self._writable = asyncio.Event()  # cleared while Redis refuses the batches' writes
        self._writable.set()

    @property
    def started(self) -> _Started:
        if self._started is None:
            raise RuntimeError("the worker is not started")
        return self._started

    @property
    def models(self) -> ModelStore:
        return self.started.models

    @property
    def http_port(self) -> int:
        return self.started.http.port

    async def start(self) -> None:
        common = self._settings.common
        threadpool_limits(limits=self._settings.blas_threads)
        redis = connect(common.redis)
        models = ModelStore(
            s3=common.s3,
            cache_dir=self._settings.cache_dir,
            metrics=self._metrics,
            index_use=self._settings.index_use,
        )
        if self._settings.model_uri and self._settings.model_manifest_sha256:
            models.pin(self._settings.model_uri, self._settings.model_manifest_sha256)
        try:
            producer = await start_producer(common.kafka)
        except Exception:
            await redis.aclose()
            raise
        readiness = Readiness()
        readiness.add("model", models.loaded)
        readiness.add("kafka", self._consuming)
        readiness.add("redis", self._redis_answers)
        readiness.add("redis_writes", self._writable)
        app = create_app(
            models=models,
            token=self._settings.control_token,
            readiness=readiness,
            allow_unpinned=self._settings.allow_unpinned_loads,
        )
        http = OpsServer(app, host=self._settings.http_host, port=self._settings.http_port)
        self._started = _Started(redis=redis, producer=producer, models=models, http=http)
        await http.start()

    async def run(self) -> None:
        try:
            if await self.models.load_first(
                self._settings.model_uri,
                stop=self._stopping,
                retry_max_s=self._settings.model_retry_max_s,
            ):
                await self._consume()
        finally:
            self._consuming.clear()
            self._run_finished.set()

    async def _consume(self) -> None:
        settings, kafka = self._settings, self._settings.common.kafka
        topic = kafka.topics.user_actions
        await ensure_topics(kafka, topic, Topics.dlq(topic))
        await check_layout(self.started.redis, settings.common.redis.keys)
        group = settings.group_id(self.models.current.name)
        self._consumer = EventConsumer(
            settings=kafka,
            topic=topic,
            group_id=group,
            model=UserAction,
            handler=self._handler(),
            producer=self.started.producer,
            metrics=self._metrics.consumer,
            max_records=settings.max_batch,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            timeouts=settings.group_timeouts,
        )
        await self._consumer.start()
        self._consuming.set()
        logger.info("consuming %s as group %s", topic, group)
        watch = asyncio.create_task(self._watch_generation(self._consumer))
        try:
            await self._consumer.run(self._stopping)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _watch_generation(self, consumer: EventConsumer[UserAction]) -> None:
        """Detect that Redis lost its data (the generation marker gone or replaced by another
        worker's rebuild) and rebuild it from the log, consuming nothing meanwhile."""
        redis, keys = self.started.redis, self._settings.common.redis.keys
        key = keys.generation()
        known: bytes | None = None
        while True:
            try:
                if known is None:
                    known = await self._generation(redis, keys, None)
                await asyncio.sleep(self._settings.generation_check_s)
                current = await redis.get(key)
                if current != known:
                    known = await self._recover(consumer, redis, keys, current)
            except (RedisError, OSError, KafkaError) as exc:
                self._metrics.rebuilds.labels("failed").inc()
                logger.warning("generation check or rebuild failed, retrying: %r", exc)

    async def _recover(
        self,
        consumer: EventConsumer[UserAction],
        redis: RedisClient,
        keys: RedisKeys,
        current: object,
    ) -> bytes:
        logger.error("Redis lost its data (generation marker gone or replaced): rebuilding")
        # Imported here, not at start: its archive reader pulls pyarrow's parquet and CSV
        # modules, which a worker does not need before it is ready (docs/benchmarks.md).
        from reco_worker.rebuild import rebuilder

        async with consumer.paused():
            work = rebuilder(self._settings, redis, self.models.current, self._metrics)
            report = await work.run(self._settings.common.kafka)
        self._metrics.rebuilds.labels("done").inc()
        logger.info("rebuilt Redis from the log: %s", report)
        return await self._generation(redis, keys, current)

    @staticmethod
    async def _generation(redis: RedisClient, keys: RedisKeys, current: object) -> bytes:
        """The marker: ``current`` if another worker set one, else a new one (first wins),
        with the key layout its data is written in."""
        if current is None:
            await mark_layout(redis, keys)
            await redis.set(keys.generation(), uuid.uuid4().hex, nx=True)
        value = await redis.get(keys.generation())
        return value.encode() if isinstance(value, str) else (value or b"")

    def _handler(self) -> ActionHandler:
        settings, models = self._settings, self.models
        history, lists = stores(settings, self.started.redis, self._metrics)
        return ActionHandler(
            lists=lists,
            history=history,
            model=lambda: models.current,
            policy=settings.policy,
            max_future_skew_s=settings.max_future_skew_s,
            metrics=self._metrics,
            writable=self._writable,
        )

    async def stop(self) -> None:
        """Stop fetching, let the batch in hand finish and commit, leave the group, close."""
        self._stopping.set()
        try:
            await self._run_finished.wait()
            if self._consumer is not None:
                await self._consumer.stop()
                logger.info("left the consumer group")
        finally:
            await self._close()

    async def _close(self) -> None:
        if self._started is None:
            return
        started = self._started
        await started.models.close()
        await started.http.stop()
        await started.producer.stop()
        await started.redis.aclose()

    async def _redis_answers(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.started.redis.ping(), READINESS_PING_TIMEOUT_S))
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.errors.labels("readiness").inc()
            logger.warning("readiness: Redis does not answer: %s", exc)
            return False
