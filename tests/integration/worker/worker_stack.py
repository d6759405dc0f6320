"""Helpers of the worker's integration tests: models on the S3 server, workers in and out of process."""

from __future__ import annotations

import asyncio
import os
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from reco_common.artifact import ITEM_FACTORS, ModelArrays, write_artifact
from reco_common.contracts import MODEL_URI_ENV, DlqHeader, EvalMetrics, Topics
from reco_common.settings import KafkaSettings
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
        "RECO_WORKER_HTTP_PORT": "0",
        "RECO_WORKER_TOP_N": str(settings.top_n),
        "RECO_WORKER_HISTORY_LEN": str(settings.history_len),
        "RECO_WORKER_MAX_BATCH": str(settings.max_batch),
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
