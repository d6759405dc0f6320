"""The integration tier runs against the real dev stack (scripts/stack.sh): Kafka, Redis, S3.

The stack is started once per session when it is not running; each test gets its own topic
prefix, Redis key prefix and S3 prefix, so tests never share state.

The tests on a Redis Cluster (``redis_cluster``) start the opt-in cluster of
``scripts/stack.sh cluster-up`` (3 primaries, 3 replicas on loopback) once per session unless it
runs. Tests that fail a node over leave the cluster serving every slot (a killed node restarted
as a replica), so the roles of its ports differ from one run to the next: no test relies on them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from cluster_nodes import URL, cluster_down, cluster_runs, cluster_up
from redis.asyncio import Redis

from reco_common.kafka import start_producer
from reco_common.redis_store import RedisClient, connect
from reco_common.settings import KafkaSettings, RedisSettings, S3Settings
from reco_common.storage import ObjectStore, open_store

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> None:
    """Start Kafka, Redis and the S3 server unless they already run (idempotent)."""
    subprocess.run([str(STACK), "up"], check=True, timeout=600)


@pytest.fixture
def kafka_settings(stack: None, unique: str) -> KafkaSettings:
    return KafkaSettings(topic_prefix=f"t{unique}-", client_id=f"test-{unique}")


@pytest.fixture
def redis_settings(stack: None, unique: str) -> RedisSettings:
    return RedisSettings(key_prefix=f"t{unique}")


@pytest.fixture
def s3_settings(stack: None) -> S3Settings:
    return S3Settings()


@pytest.fixture
def s3_root(s3_settings: S3Settings, unique: str) -> str:
    """A fresh prefix in the stack's bucket."""
    return f"s3://{os.environ.get('RECO_S3_BUCKET', 'reco')}/t{unique}"


@pytest.fixture
def s3_store(s3_root: str, s3_settings: S3Settings) -> ObjectStore:
    return open_store(s3_root, s3=s3_settings)


@pytest.fixture
async def producer(kafka_settings: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    producer = await start_producer(kafka_settings)
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture
async def redis(redis_settings: RedisSettings) -> AsyncIterator[Redis]:
    client = connect(redis_settings)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """The URL of the dev stack's Redis Cluster, started unless it runs; stopped again at the
    end of the session when the session started it (its six processes and ports are not left
    behind by `make test`)."""
    ours = not cluster_runs()
    cluster_up()
    yield URL
    if ours:
        cluster_down()


@pytest.fixture
def cluster_settings(redis_cluster: str, unique: str) -> RedisSettings:
    return RedisSettings(url=redis_cluster, key_prefix=f"t{unique}")


@pytest.fixture
async def cluster_redis(cluster_settings: RedisSettings) -> AsyncIterator[RedisClient]:
    client = connect(cluster_settings)
    try:
        yield client
    finally:
        await client.aclose()
