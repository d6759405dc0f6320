"""Helpers of the worker's integration tests: models on the S3 server, workers in and out of process."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from msgspec.structs import asdict
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio.cluster import RedisCluster

from reco_common.artifact import ITEM_FACTORS, ModelArrays, announcement, write_artifact
from reco_common.contracts import (
    MODEL_URI_ENV,
    ActionType,
    DlqHeader,
    EvalMetrics,
    Topics,
    UserAction,
    decode_recommendations,
    encode,
)
from reco_common.kafka import admin_client, ensure_topics
from reco_common.redis_store import RedisClient
from reco_common.settings import KafkaSettings, RedisSettings
from reco_common.storage import ObjectStore
from reco_worker.settings import WorkerSettings
from reco_worker.worker import Worker

MODEL = "shop"
N_ITEMS = 400
N_USERS = 40
DIM = 16
WAIT_S = 60.0
TOKEN = "integration-token"
POLL_S = 0.1


BASE = datetime(2026, 11, 1, tzinfo=UTC)
ACTIONS = list(ActionType)


def numbered(n: int) -> UserAction:
    """Event ``n``: user ``n % N_USERS``, a deterministic item, action and time."""
    return UserAction(
        event_id=f"e{n}",
        user_id=f"u{n % N_USERS}",
        item_id=f"i{(n * 37) % 450}",  # i400..i449 are unknown to the model
        action=ACTIONS[n % len(ACTIONS)],
        ts=BASE + timedelta(seconds=n),
    )


_MADE: set[str] = set()


async def produce(
    producer: AIOKafkaProducer, topic: str, events: list[UserAction], *, chunk: int = 0
) -> None:
    """Send ``events`` keyed by user; with ``chunk``, a steady trickle of that many every 20 ms.

    The ``user-actions`` topic is made first as the services make it (the contract's partition
    count), when the test's producer comes before the worker: the dev broker would create it
    with its own default count.
    """
    if topic not in _MADE:
        prefix = topic.removesuffix(Topics().user_actions)
        await ensure_topics(KafkaSettings(topic_prefix=prefix), topic)
        _MADE.add(topic)
    step = chunk or len(events)
    for start in range(0, len(events), step):
        sends = [
            await producer.send(topic, encode(e), key=e.user_id.encode())
            for e in events[start : start + step]
        ]
        await asyncio.gather(*sends)
        if chunk:
            await asyncio.sleep(0.02)


async def snapshot(redis: RedisClient, prefix: str) -> dict[str, Any]:
    """Every list (without ``computed_at``) and every history under ``prefix``."""
    state: dict[str, Any] = {}
    async for key in redis.scan_iter(match=f"{prefix}:*"):
        name = key.decode().removeprefix(prefix)
        if ":rec:" in name:
            value = decode_recommendations(await redis.get(key))
            state[name] = {k: v for k, v in asdict(value).items() if k != "computed_at"}
        elif name.endswith(":hist"):
            state[name] = await redis.zrange(key, 0, -1, withscores=True)
    return state


def arrays(*, seed: int) -> ModelArrays:
    rng = np.random.default_rng(seed)
    return ModelArrays(
        item_ids=[f"i{n}" for n in range(N_ITEMS)],
        user_ids=[f"u{n}" for n in range(0, N_USERS, 2)],  # odd users are cold starts
        item_factors=rng.standard_normal((N_ITEMS, DIM + 1), dtype=np.float32),
        user_factors=rng.standard_normal((N_USERS // 2, DIM + 1), dtype=np.float32),
        popular_items=[f"i{n}" for n in range(50)],
        popular_scores=[float(50 - n) for n in range(50)],
    )


def publish(store: ObjectStore, version: str, *, seed: int = 0, model_name: str = MODEL) -> str:
    return write_artifact(
        store,
        model_name=model_name,
        version=version,
        arrays=arrays(seed=seed),
        created_at=datetime.now(UTC),
        data_snapshot="integration",
        params={},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
    )


def pinned(store: ObjectStore, uri: str) -> dict[str, str]:
    """A ``POST /v1/model`` body for ``uri`` with the pin its announcement would carry."""
    artifact = store.below(uri.removeprefix(store.root_uri + "/"))
    return {"model_uri": uri, "manifest_sha256": announcement(artifact).manifest_sha256}


def corrupt(store: ObjectStore, uri: str) -> None:
    """Replace one file of a published artifact: its checksum no longer matches."""
    prefix = uri.removeprefix(store.root_uri + "/")
    store.put_bytes(f"{prefix}/{ITEM_FACTORS}", b"\x93NUMPY not really")


@dataclass
class RunningWorker:
    worker: Worker
    http: httpx.AsyncClient

    async def ready(self) -> bool:
        return (await self.http.get("/readyz")).status_code == 200


@asynccontextmanager
async def running(
    settings: WorkerSettings, *, wait_ready: bool = True
) -> AsyncIterator[RunningWorker]:
    """An in-process worker, stopped the way ``lifecycle.serve`` stops it."""
    worker = Worker(settings=settings)
    await worker.start()
    run = asyncio.create_task(worker.run())
    base = f"http://127.0.0.1:{worker.http_port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=5) as http:
            handle = RunningWorker(worker, http)
            if wait_ready:
                await until(handle.ready, what="the worker to be ready")
            yield handle
    finally:
        await asyncio.wait_for(worker.stop(), timeout=30)
        await run


async def until(condition: Callable[[], object], *, what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` (sync or async) until true; fail naming ``what`` after the bound."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(POLL_S)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


def on_redis(settings: WorkerSettings, redis: RedisSettings) -> WorkerSettings:
    """``settings`` writing to another Redis (a cluster) with its key prefix."""
    common = settings.common.model_copy(update={"redis": redis})
    return settings.model_copy(update={"common": common})


def namespaced(settings: WorkerSettings, suffix: str, **overrides: Any) -> WorkerSettings:
    """``settings`` on their own topics and keys (``suffix`` added to both prefixes)."""
    common = settings.common
    kafka = common.kafka.model_copy(
        update={"topic_prefix": f"{common.kafka.topic_prefix}{suffix}-"}
    )
    redis = common.redis.model_copy(update={"key_prefix": common.redis.key_prefix + suffix})
    update = {"common": common.model_copy(update={"kafka": kafka, "redis": redis}), **overrides}
    return settings.model_copy(update=update)


def subprocess_env(settings: WorkerSettings) -> dict[str, str]:
    common = settings.common
    return {
        **os.environ,
        MODEL_URI_ENV: settings.model_uri or "",
        "RECO_KAFKA_BOOTSTRAP": common.kafka.bootstrap,
        "RECO_KAFKA_TOPIC_PREFIX": common.kafka.topic_prefix,
        "RECO_REDIS_URL": common.redis.url,
        "RECO_REDIS_KEY_PREFIX": common.redis.key_prefix,
        "RECO_WORKER_CACHE_DIR": str(settings.cache_dir),
        "RECO_WORKER_HTTP_HOST": "127.0.0.1",
        "RECO_WORKER_HTTP_PORT": str(settings.http_port),
        "RECO_WORKER_TOP_N": str(settings.top_n),
        "RECO_WORKER_HISTORY_LEN": str(settings.history_len),
        "RECO_WORKER_MAX_BATCH": str(settings.max_batch),
        "RECO_WORKER_BATCH_TIMEOUT_S": str(settings.batch_timeout_s),
        "RECO_WORKER_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
    }


@asynccontextmanager
async def worker_process(settings: WorkerSettings, log: Path) -> AsyncIterator[Process]:
    """``reco-worker`` as a real process; killed with SIGKILL at the end if still alive."""
    command = Path(sys.executable).with_name("reco-worker")
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            str(command), env=subprocess_env(settings), stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), timeout=30)


async def committed_and_end(settings: WorkerSettings) -> tuple[int, int]:
    """Offsets the worker's group committed on ``user-actions``, and the topic's end, summed."""
    kafka = settings.common.kafka
    topic = kafka.topics.user_actions
    partitions = [TopicPartition(topic, p) for p in range(kafka.topics.partitions(topic))]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(settings.group_id(MODEL))
    finally:
        await admin.close()
        await consumer.stop()
    done = sum(committed[tp].offset for tp in partitions if tp in committed)
    return done, sum(ends.values())


async def fully_committed(settings: WorkerSettings) -> bool:
    """The worker's group has committed up to the end of every ``user-actions`` partition."""
    done, end = await committed_and_end(settings)
    return done == end


async def all_applied(
    redis: RedisClient, settings: WorkerSettings, events: list[UserAction]
) -> bool:
    """Each user's list was computed after their last event, and every event was committed."""
    last = {e.user_id: e.event_id for e in events}
    keys = settings.common.redis.keys
    names = [keys.recommendations(MODEL, u) for u in last]
    values = await (
        redis.mget_nonatomic(names) if isinstance(redis, RedisCluster) else redis.mget(names)
    )
    done = [
        v is not None and decode_recommendations(v).event_id == last[u]
        for u, v in zip(last, values, strict=True)
    ]
    return all(done) and await fully_committed(settings)


async def clean_pass(
    settings: WorkerSettings,
    events: list[UserAction],
    producer: AIOKafkaProducer,
    redis: RedisClient,
) -> dict[str, Any]:
    """The state one in-process worker reaches from ``events`` without faults: the reference
    that a run with faults must equal (Jepsen's pattern)."""
    async with running(settings):
        await produce(producer, settings.common.kafka.topics.user_actions, events)
        await until(lambda: all_applied(redis, settings, events), what="the clean pass")
    return await snapshot(redis, settings.common.redis.key_prefix)


async def group_members(settings: WorkerSettings) -> tuple[str, int]:
    """The state of the worker's consumer group (``Stable``, ``PreparingRebalance``, …) and how
    many members it has."""
    kafka = settings.common.kafka
    async with admin_client(kafka) as admin:
        (response,) = await admin.describe_consumer_groups([settings.group_id(MODEL)])
    (group,) = response.to_object()["groups"]
    return str(group["state"]), len(group["members"])


async def dead_letters(kafka: KafkaSettings, topic: str, *, count: int) -> list[tuple[str, str]]:
    """``(x-error-type, x-error)`` of the dead letters of ``topic``, sorted; waits for ``count``."""
    consumer = AIOKafkaConsumer(
        Topics.dlq(topic), bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[tuple[str, str]] = []
    try:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while len(found) < count and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    headers = {k: v.decode() for k, v in record.headers}
                    found.append((headers[DlqHeader.ERROR_TYPE], headers[DlqHeader.ERROR]))
    finally:
        await consumer.stop()
    return sorted(found)


class HoldingProxy:
    """A TCP proxy in front of Redis that can hold what a client sends until released.

    While held, requests stay in the proxy (``held`` counts their bytes): the client is stuck in
    the middle of whatever Redis call it made, and the request reaches Redis only on release.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self.held = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def hold(self) -> None:
        self.held = 0
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, gated=True), self._pipe(up_reader, writer)
            )
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            up_writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, gated: bool = False
    ) -> None:
        while chunk := await reader.read(65536):
            if gated and not self._open.is_set():
                self.held += len(chunk)
                await self._open.wait()
            writer.write(chunk)
            await writer.drain()
        writer.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def metric(http: httpx.AsyncClient, name: str) -> float:
    """The value of an unlabelled metric on a worker's ``/metrics``."""
    for family in text_string_to_metric_families((await http.get("/metrics")).text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


async def labelled(http: httpx.AsyncClient, name: str) -> list[dict[str, str]]:
    """The label sets of a metric's series on a worker's ``/metrics``."""
    return [
        sample.labels
        for family in text_string_to_metric_families((await http.get("/metrics")).text)
        for sample in family.samples
        if sample.name == name
    ]
