"""Helpers for the trainer against the real stack: produce actions, read a topic to its end,
and run ``reco-trainer`` as the CronJob would (a real process with environment settings)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from reco_common.contracts import UserAction, encode
from reco_common.kafka import ensure_topics
from reco_common.settings import KafkaSettings

TINY_PARAMS = {
    "RECO_TRAINER_PARAMS__COMPONENTS": "8",
    "RECO_TRAINER_PARAMS__EPOCHS": "3",
    "RECO_TRAINER_PARAMS__THREADS": "1",
    "RECO_TRAINER_PARAMS__VALIDATION_USERS": "200",
}


async def produce(
    producer: AIOKafkaProducer, kafka: KafkaSettings, actions: Iterable[UserAction]
) -> int:
    topic = kafka.topics.user_actions
    await ensure_topics(kafka, topic)
    sends = [await producer.send(topic, encode(a), key=a.user_id.encode()) for a in actions]
    await asyncio.gather(*sends)
    return len(sends)


async def partitions(kafka: KafkaSettings, topic: str) -> list[TopicPartition]:
    """The topic's partitions from the brokers (``[]`` when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


async def read_all(
    kafka: KafkaSettings, topic: str, *, timeout_s: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its end offsets now (bounded in time)."""
    tps = await partitions(kafka, topic)
    if not tps:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            assert time.monotonic() < deadline, f"{topic} not read to its end in {timeout_s} s"
            for part in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


def run_trainer(
    args: list[str], *, kafka: KafkaSettings, store_uri: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m reco_trainer <args>`` with the test's topic prefix and store."""
    env = {
        **os.environ,
        "RECO_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "RECO_KAFKA_CLIENT_ID": kafka.client_id,
        "RECO_TRAINER_STORE_URI": store_uri,
        "RECO_TRAINER_MODEL_NAME": "shop",
        **TINY_PARAMS,
        **(extra or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "reco_trainer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
