"""Kafka with SASL/SCRAM and ACLs (docs/security.md, "Kafka"), on the real broker.

The module starts a Kafka broker of its own with scripts/stack.sh, from an empty data dir and on
ports of its own, exactly as a fresh machine's ``scripts/stack.sh up`` does (users and ACLs of
scripts/stack/kafka/acls.txt); the shared broker is never restarted. Then:

- each principal may produce to and read from exactly the topics of the matrix, which the test
  states on its own (not read back from reco_common.kafka_access): a worker's principal
  publishing ``model-published`` is refused by the broker, and nothing lands;
- a wrong password and an anonymous client are refused on the SASL listener;
- the whole loop still works with each service as its own principal: the shop's events, the
  trainer's ``run`` (archive of ``user-actions``, training, ``model-published``), the
  controller's rollout (``rollout-events``), the worker's lists and its dead letters.

Wall time: about a minute for the broker (JVM start, one more for the users and ACLs) plus
the pipeline's training, on the 2-core machine.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from e2e_support import Launcher, quick_api, start_workers, until

from reco_common.contracts import ActionType, EvalMetrics, ModelPublished, Topics, UserAction
from reco_common.kafka import KafkaUnavailableError, ensure_topics, publish, start_producer
from reco_common.kafka_access import Principal, render
from reco_common.settings import CommonSettings, KafkaSettings
from reco_devkit import services
from reco_devkit.observe import ModelTopics, recommendations
from reco_devkit.procs import free_port
from reco_devkit.services import RunSpace, as_principal
from reco_devkit.traffic import ActionSender, ShopFiles

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack.sh"
# The module's broker starts in the first test's setup (a JVM, then the users and ACLs) and the
# loop trains a model: minutes on a loaded 2-core machine, not the default 120 s.
pytestmark = pytest.mark.timeout(600)
PROBE_S = 10.0  # how long a refused probe may keep retrying before it counts as refused

TRAINER, CONTROLLER, WORKER, SHOP = (
    Principal.TRAINER,
    Principal.CONTROLLER,
    Principal.WORKER,
    Principal.SHOP,
)
# Who may write and who may read each topic: docs/security.md's table, written down again
# (reco-keda, KEDA's lag reader, may do neither anywhere).
WRITERS = {
    "model-published": {TRAINER},
    "rollout-events": {CONTROLLER},
    "user-actions": {SHOP},
    "user-actions.dlq": {WORKER},
    "model-published.dlq": {CONTROLLER},
}
READERS = {
    "model-published": {CONTROLLER},
    "rollout-events": set(),
    "user-actions": {TRAINER, WORKER},
    "user-actions.dlq": set(),
    "model-published.dlq": set(),
}


@dataclass(frozen=True)
class SecuredKafka:
    """The module's broker: the anonymous development listener and the SASL one."""

    env: dict[str, str]
    dev: str
    sasl: str

    def as_principal(self, principal: Principal, *, password: str | None = None) -> KafkaSettings:
        kafka = KafkaSettings(client_id=f"acl-test-{principal.value}")
        return as_principal(kafka, principal, bootstrap=self.sasl, password=password)

    def grant(self, topics: Topics, directory: Path) -> None:
        """The matrix for another topic namespace (a run's prefix), through stack.sh grant."""
        acls = directory / f"acls-{topics.prefix or 'default'}.txt"
        acls.write_text(render(topics))
        subprocess.run([str(STACK), "grant", str(acls)], env=self.env, check=True, timeout=180)


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    root = tmp_path_factory.mktemp("kafka-acls")
    port, sasl = free_port(), free_port()
    env = os.environ | {
        "RECO_STACK_DIR": str(root),
        "RECO_KAFKA_PORT": str(port),
        "RECO_KAFKA_SASL_PORT": str(sasl),
        "RECO_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    subprocess.run([str(STACK), "up", "kafka"], env=env, check=True, timeout=600)
    try:
        yield SecuredKafka(env=env, dev=f"127.0.0.1:{port}", sasl=f"127.0.0.1:{sasl}")
    finally:
        subprocess.run([str(STACK), "down", "kafka"], env=env, check=False, timeout=120)


def announcement(version: str) -> ModelPublished:
    return ModelPublished(
        model_name="shop",
        version=version,
        artifact_uri=f"s3://reco/models/shop/{version}",
        created_at=datetime.now(UTC),
        metrics=EvalMetrics(model={"precision@10": 1.0}, baseline={"precision@10": 0.0}),
        data_snapshot="forged",
        manifest_sha256="f" * 64,
    )


async def end_offset(kafka: KafkaSettings, topic: str) -> int:
    consumer = AIOKafkaConsumer(**kafka.client_options())
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def may_write(kafka: KafkaSettings, topic: str) -> bool:
    try:
        producer = await start_producer(kafka)
    except ClusterAuthorizationFailedError:  # Write on no topic at all (reco-keda): the broker
        return False  # refuses the idempotent producer its producer id
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, b"probe"), timeout=PROBE_S)
        return True
    except (TopicAuthorizationFailedError, TimeoutError):
        return False
    finally:
        await producer.stop()


async def may_read(kafka: KafkaSettings, topic: str) -> bool:
    """Whether the first record of ``topic`` (there is one) reaches this client in time; a
    refused client gets an authorization error, or nothing while its client retries."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await asyncio.wait_for(consumer.seek_to_beginning(tp), timeout=PROBE_S)
        fetched = await asyncio.wait_for(consumer.getmany(tp, timeout_ms=2000), timeout=PROBE_S)
        return bool(fetched.get(tp))
    except (TopicAuthorizationFailedError, TimeoutError):
        return False
    finally:
        await consumer.stop()


async def test_a_workers_principal_may_not_announce_a_model(secured_kafka: SecuredKafka) -> None:
    dev = KafkaSettings(bootstrap=secured_kafka.dev)
    topic = Topics().model_published
    await ensure_topics(dev, topic)
    before = await end_offset(dev, topic)

    producer = await start_producer(secured_kafka.as_principal(WORKER))
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await publish(producer, topic, "shop", announcement("forged"))
    finally:
        await producer.stop()
    assert await end_offset(dev, topic) == before

    producer = await start_producer(secured_kafka.as_principal(TRAINER))
    try:
        await publish(producer, topic, "shop", announcement("genuine"))
    finally:
        await producer.stop()
    assert await end_offset(dev, topic) == before + 1


async def test_each_principal_writes_and_reads_only_its_own_topics(
    secured_kafka: SecuredKafka,
) -> None:
    dev = KafkaSettings(bootstrap=secured_kafka.dev)
    await ensure_topics(dev, *WRITERS, partitions=dict.fromkeys(WRITERS, 1))
    producer = await start_producer(dev)
    try:
        for topic in WRITERS:  # something to read on every topic
            await producer.send_and_wait(topic, b"first")
    finally:
        await producer.stop()
    pairs = [(principal, topic) for principal in Principal for topic in WRITERS]
    wrote, read = await asyncio.gather(
        asyncio.gather(*(may_write(secured_kafka.as_principal(p), t) for p, t in pairs)),
        asyncio.gather(*(may_read(secured_kafka.as_principal(p), t) for p, t in pairs)),
    )
    assert {
        t: {p for (p, tt), ok in zip(pairs, wrote, strict=True) if ok and tt == t} for t in WRITERS
    } == WRITERS
    assert {
        t: {p for (p, tt), ok in zip(pairs, read, strict=True) if ok and tt == t} for t in READERS
    } == READERS


async def test_a_wrong_password_and_an_anonymous_client_are_refused(
    secured_kafka: SecuredKafka,
) -> None:
    with pytest.raises(KafkaUnavailableError):
        await start_producer(secured_kafka.as_principal(TRAINER, password="not-the-password"))
    anonymous = KafkaSettings(bootstrap=secured_kafka.sasl)
    with pytest.raises(KafkaUnavailableError):
        await start_producer(anonymous)


# --------------------------------------------------------------------------- the whole loop


@pytest.fixture
def loop_space(stack: None, secured_kafka: SecuredKafka, e2e_root: Path) -> RunSpace:
    backends = CommonSettings(kafka=KafkaSettings(bootstrap=secured_kafka.dev))
    space = RunSpace.create(
        e2e_root, label="acls", backends=backends, sasl_bootstrap=secured_kafka.sasl
    )
    secured_kafka.grant(space.kafka.topics, space.root)
    return space


async def test_every_service_works_as_its_own_principal(
    loop_space: RunSpace, shop: ShopFiles, launcher: Launcher
) -> None:
    space = loop_space
    [worker] = await start_workers(launcher, space, 1, model_uri=None)
    _, api = await asyncio.gather(
        launcher.start(services.local_controller(space, [worker])),
        launcher.start(quick_api(space)),
    )
    topics = ModelTopics(space.kafka)  # the test's own eyes: the development listener
    await topics.start()
    try:
        user, item = shop.users[0], shop.items[3]
        async with ActionSender(space.kafka_as(SHOP)) as sender:
            await sender.send([action(user, item, ActionType.VIEW, n) for n in range(20)])
            producer = await start_producer(space.kafka_as(SHOP))
            try:
                await producer.send_and_wait(space.kafka.topics.user_actions, b"not an event")
            finally:
                await producer.stop()
            job = services.retrain(
                space, base_interactions=[shop.interactions_uri], item_features=shop.items_uri
            )
            job.start()
            assert await asyncio.to_thread(job.wait, timeout_s=300) == 0, job.tail()
            published = await topics.wait_published(count=1, timeout_s=30)
            await topics.wait_for(published.version, "succeeded", timeout_s=90)
            await asyncio.to_thread(worker.wait_ready, timeout_s=60)
            await sender.send([action(user, item, ActionType.PURCHASE, 99)])
            assert api.base_url is not None
            listed = await until(
                lambda: personalized(api.base_url or "", user), what="a list", timeout_s=20
            )
        dlq = Topics.dlq(space.kafka.topics.user_actions)
        await until(
            lambda: end_offset_or_zero(space.kafka, dlq), what="the dead letter", timeout_s=20
        )
    finally:
        await topics.stop()
    assert listed["model_version"] == published.version
    assert published.data_snapshot != ""


def action(user: str, item: str, kind: ActionType, n: int) -> UserAction:
    return UserAction(
        event_id=f"acl-{user}-{n}",
        user_id=user,
        item_id=item,
        action=kind,
        ts=datetime.now(UTC),
    )


async def personalized(api_url: str, user: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient() as http:
        listed: dict[str, Any] | None = await recommendations(http, api_url, user)
    return listed if listed and listed["source"] == "personalized" else None


async def end_offset_or_zero(kafka: KafkaSettings, topic: str) -> int:
    try:
        return await end_offset(kafka, topic)
    except KafkaError:
        return 0
