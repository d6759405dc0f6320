"""KEDA's principal ``reco-keda`` on the dev stack's real broker: a worker group's lag, nothing else.

deploy/k8s/components/elastic-workers lets KEDA's operator read the workers' consumer lag as
``reco-keda`` (reco_common.kafka_access: Describe on ``user-actions`` and on the ``worker-*``
groups). Here, on the broker's SASL/SCRAM listener (``RECO_KAFKA_SASL_PORT``, 9094) where the
ACLs hold, with the test's own topic prefix granted by ``scripts/stack.sh grant`` (which also
makes every principal's SCRAM user, development passwords): a worker's principal commits
offsets for its group; ``reco-keda`` reads what the lag is made of, the topic's partitions and
end offsets and the group's committed offsets, as KEDA's scaler asks for them; and it is refused
(an authorization error from the broker, not a timeout) when it reads a record of
``user-actions``, joins the group, commits an offset for it, or produces to ``user-actions`` or
its dead letters. The expected rights are written down here, not read back from the matrix.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition, errors
from aiokafka.admin import AIOKafkaAdminClient

from reco_common.contracts import Topics
from reco_common.kafka import ensure_topics
from reco_common.kafka_access import Principal, render
from reco_common.settings import KafkaSettings
from reco_devkit.services import as_principal as principal_settings

REPO = Path(__file__).resolve().parents[3]
STACK = REPO / "scripts" / "stack.sh"
SASL_BOOTSTRAP = f"127.0.0.1:{os.environ.get('RECO_KAFKA_SASL_PORT', '9094')}"
PARTITIONS = 3
RECORDS = 10  # per partition
COMMITTED = {0: 4, 1: RECORDS}  # what the worker's group commits; partition 2: nothing yet
REFUSAL_S = 15.0  # a refusal is an answer from the broker: no client retries until then
# `scripts/stack.sh grant` starts a JVM for Kafka's Admin API: seconds, more on a loaded machine.
pytestmark = pytest.mark.timeout(300)


def as_principal(kafka: KafkaSettings, principal: Principal) -> KafkaSettings:
    """``kafka``'s topics on the SASL listener, as ``principal`` with its development password."""
    return principal_settings(kafka, principal, bootstrap=SASL_BOOTSTRAP)


@pytest.fixture
def granted(kafka_settings: KafkaSettings, tmp_path: Path) -> KafkaSettings:
    """The matrix for the test's topic prefix on the shared broker, through scripts/stack.sh."""
    acls = tmp_path / "acls.txt"
    acls.write_text(render(kafka_settings.topics))
    subprocess.run([str(STACK), "grant", str(acls)], check=True, timeout=240)
    return kafka_settings


@asynccontextmanager
async def consumer(kafka: KafkaSettings, **options: object) -> AsyncIterator[AIOKafkaConsumer]:
    client = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False, **options)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


@pytest.fixture
async def worker_group(granted: KafkaSettings) -> str:
    """``user-actions`` with RECORDS records in each partition, and a worker group that
    committed COMMITTED, as the worker's principal."""
    topic = granted.topics.user_actions
    await ensure_topics(granted, topic, partitions={topic: PARTITIONS})
    producer = AIOKafkaProducer(**granted.client_options())
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            for n in range(RECORDS):
                await producer.send(topic, f"{partition}-{n}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    group = f"{granted.topic_prefix}worker-shop"
    worker = as_principal(granted, Principal.WORKER)
    async with consumer(worker, group_id=group) as client:
        client.assign([TopicPartition(topic, p) for p in COMMITTED])
        await client.commit({TopicPartition(topic, p): o for p, o in COMMITTED.items()})
    return group


async def lag_parts(
    kafka: KafkaSettings, group: str
) -> tuple[set[int], dict[int, int], dict[int, int]]:
    """What KEDA's scaler reads, with the same requests: the topic's partitions (Metadata),
    their end offsets (ListOffsets) and the group's committed offsets (FindCoordinator,
    OffsetFetch), by partition."""
    topic = kafka.topics.user_actions
    admin = AIOKafkaAdminClient(**kafka.client_options())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    if described["error_code"]:
        raise errors.for_code(described["error_code"])(topic)
    partitions = {p["partition"] for p in described["partitions"]}
    async with consumer(kafka) as client:
        ends = await client.end_offsets([TopicPartition(topic, p) for p in partitions])
    return (
        partitions,
        {tp.partition: offset for tp, offset in ends.items()},
        {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == topic},
    )


async def refused(attempt: Callable[[], Awaitable[object]]) -> errors.KafkaError | None:
    """The broker's authorization error for ``attempt`` (None if it went through)."""
    try:
        await asyncio.wait_for(attempt(), timeout=REFUSAL_S)
    except (errors.TopicAuthorizationFailedError, errors.GroupAuthorizationFailedError) as exc:
        return exc
    return None


async def test_keda_reads_the_lag_of_a_worker_group(
    granted: KafkaSettings, worker_group: str
) -> None:
    keda = as_principal(granted, Principal.KEDA)
    partitions, ends, committed = await lag_parts(keda, worker_group)
    assert partitions == set(range(PARTITIONS))
    assert ends == dict.fromkeys(range(PARTITIONS), RECORDS)
    assert committed == COMMITTED
    lag = {p: ends[p] - committed.get(p, 0) for p in partitions}  # offsetResetPolicy: earliest
    assert lag == {0: RECORDS - 4, 1: 0, 2: RECORDS}


async def test_keda_may_not_read_actions_join_commit_or_produce(
    granted: KafkaSettings, worker_group: str
) -> None:
    keda = as_principal(granted, Principal.KEDA)
    topic = granted.topics.user_actions
    tp = TopicPartition(topic, 0)

    async def read_a_record() -> object:
        async with consumer(keda) as client:
            client.assign([tp])
            await client.seek_to_beginning(tp)
            return await client.getone(tp)

    async def join_the_group() -> object:
        async with consumer(keda, group_id=worker_group) as client:
            client.subscribe([topic])
            return await client.getone()

    async def commit_for_the_group() -> object:
        async with consumer(keda, group_id=worker_group) as client:
            client.assign([tp])
            await client.commit({tp: RECORDS})
            return None

    def produce_to(target: str) -> Callable[[], Awaitable[object]]:
        async def attempt() -> object:
            producer = AIOKafkaProducer(**keda.client_options())
            await producer.start()
            try:
                return await producer.send_and_wait(target, b"forged")
            finally:
                await producer.stop()

        return attempt

    attempts = {
        "read a record": read_a_record,
        "join the group": join_the_group,
        "commit for the group": commit_for_the_group,
        "produce user-actions": produce_to(topic),
        "produce its dead letters": produce_to(Topics.dlq(topic)),
    }
    answers = {what: await refused(attempt) for what, attempt in attempts.items()}
    assert {what: type(e).__name__ for what, e in answers.items()} == {
        "read a record": "TopicAuthorizationFailedError",
        "join the group": "GroupAuthorizationFailedError",
        "commit for the group": "GroupAuthorizationFailedError",
        "produce user-actions": "TopicAuthorizationFailedError",
        "produce its dead letters": "TopicAuthorizationFailedError",
    }
    # Nothing moved: the group's offsets and the topic's end are as the worker left them.
    _, ends, committed = await lag_parts(keda, worker_group)
    assert committed == COMMITTED
    assert ends == dict.fromkeys(range(PARTITIONS), RECORDS)
