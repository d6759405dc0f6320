"""A replicated Kafka: the dev stack's three-broker cluster (``scripts/stack.sh kafka3-up``).

Topics are made by ``reco_common.kafka.ensure_topics`` with 3 replicas and
``min.insync.replicas=2`` there. Then a broker is killed (SIGKILL) while numbered events stream
to three worker processes: the broker coordinating their consumer group, which also leads about
a third of the partitions. It comes back a few seconds later. Nothing is lost and nothing is
applied twice in effect: every event is in its user's history, and the Redis state equals that
of a clean replay of the topic (Jepsen's pattern, as in test_faults.py).

The cluster is started for this module (idempotent) and stopped after it; the default single
broker of the other tests is not touched.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from e2e_support import (
    HISTORY_LEN,
    STACK,
    Launcher,
    Model,
    assert_clean_run,
    group_of,
    now,
    numbered,
    start_workers,
    until,
    users_for,
)
from redis.asyncio import Redis

from reco_common.contracts import Topics
from reco_common.kafka import admin_client, ensure_topics
from reco_common.settings import CommonSettings
from reco_devkit.services import RunSpace
from reco_devkit.traffic import ActionSender, ShopFiles, stream

# About 12 s of events, so that the broker's loss and its return fall inside the stream.
N_EVENTS = 1_800
RATE = 150.0
FAULT_AT = N_EVENTS // 4
DOWN_S = 5.0  # the killed broker stays down this long (its session times out after 6 s)
SETTLE_S = 120.0


def stack_sh(*args: str, timeout_s: float = 300) -> str:
    done = subprocess.run(
        [str(STACK), *args], check=True, timeout=timeout_s, capture_output=True, text=True
    )
    return done.stdout


@pytest.fixture(scope="module")
def kafka3() -> Iterator[str]:
    """The three-broker cluster's bootstrap, started unless it runs; stopped at the end."""
    stack_sh("kafka3-up")
    try:
        yield stack_sh("kafka3-env").strip().split("=", 1)[1]
    finally:
        stack_sh("kafka3-down", timeout_s=120)


@pytest.fixture
def space(kafka3: str, stack: None, e2e_root: Path) -> RunSpace:
    """The run's space, on the three-broker cluster (Redis as usual)."""
    common = CommonSettings()
    kafka = common.kafka.model_copy(update={"bootstrap": kafka3})
    return RunSpace.create(
        e2e_root, label="kafka3", backends=common.model_copy(update={"kafka": kafka})
    )


def broker_pid(node: int) -> int:
    """The pid of the cluster's node ``node``, from ``kafka3-status``."""
    line = stack_sh("kafka3-status", str(node)).split()
    return int(next(field for field in line if field.startswith("pid=")).removeprefix("pid="))


async def coordinator(space: RunSpace) -> int:
    """The broker coordinating the workers' group, once the group has one."""

    async def found() -> int | None:
        async with admin_client(space.kafka) as admin:
            try:
                node: int = await admin.find_coordinator(group_of(space))
            except KafkaError:
                return None
            return node

    node: int = await until(found, what="the group's coordinator", timeout_s=60)
    return node


async def leaders(space: RunSpace) -> set[int]:
    """The brokers leading a partition of the run's ``user-actions``."""
    topic = space.kafka.topics.user_actions
    async with admin_client(space.kafka) as admin:
        (described,) = await admin.describe_topics([topic])
    return {p["leader"] for p in described["partitions"]}


@pytest.mark.timeout(300)  # the first test of the module starts the cluster (three JVMs)
async def test_topics_have_three_replicas_and_two_in_sync(space: RunSpace) -> None:
    topic = space.kafka.topics.user_actions
    await ensure_topics(space.kafka, topic, Topics.dlq(topic))
    async with admin_client(space.kafka) as admin:
        (described,) = await admin.describe_topics([topic])
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in (topic, Topics.dlq(topic))]
        )
    partitions = described["partitions"]
    assert len(partitions) == space.kafka.topics.partitions(topic) == 24
    assert {len(p["replicas"]) for p in partitions} == {3}
    assert await leaders(space) == {1, 2, 3}  # leadership spread over the brokers
    for response in configs:
        for resource in response.to_object()["resources"]:
            entries = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            assert entries["min.insync.replicas"] == "2", resource["resource_name"]


@pytest.mark.timeout(420)  # three workers, a broker's JVM killed and started again, the replay
async def test_a_broker_killed_mid_stream(
    space: RunSpace,
    launcher: Launcher,
    models: tuple[Model, Model],
    shop: ShopFiles,
    redis: Redis,
    e2e_root: Path,
) -> None:
    users = users_for(shop.users, known=50, cold=10)
    events = numbered(N_EVENTS, users=users, items=[*shop.items, "unknown-item-1"], start=now())
    workers = await start_workers(launcher, space, 3, model_uri=models[0].uri, max_batch="50")
    victim = await coordinator(space)
    assert victim in await leaders(space), "the victim leads none of the run's partitions"
    async with ActionSender(space.kafka) as sender:
        task = asyncio.create_task(stream(sender, events, rate=RATE))
        await until(
            lambda: task.done() or sender.sent >= FAULT_AT,
            what="a third of the events sent",
            timeout_s=60,
        )
        os.kill(broker_pid(victim), signal.SIGKILL)
        await asyncio.sleep(DOWN_S)
        await asyncio.to_thread(stack_sh, "kafka3-up")  # the victim again; waits for 3 brokers
        await asyncio.wait_for(task, timeout=180)
    assert all(w.running() for w in workers)
    await assert_clean_run(
        space,
        events,
        models[:1],
        redis=redis,
        root=e2e_root,
        history_len=HISTORY_LEN,
        settle_s=SETTLE_S,
    )
