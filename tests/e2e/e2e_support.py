"""Helpers of the end-to-end tier: numbered events, Redis snapshots, the clean replay, polling.

The property every fault test proves (Jepsen's pattern): after the faults, the Redis state of
the run equals the state one clean worker computes from the same events. "The same events" is
what the run's ``user-actions`` topic holds in the end (so a record the producer had to send
twice is replayed twice too); a separate check proves every numbered event is in it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from msgspec.structs import asdict
from redis.asyncio import Redis

from reco_common.artifact import announcement
from reco_common.contracts import (
    ActionType,
    ModelPublished,
    UserAction,
    decode,
    decode_history_member,
    decode_recommendations,
)
from reco_common.kafka import KafkaUnavailableError, ensure_topics, start_producer
from reco_common.settings import CommonSettings
from reco_common.storage import open_store
from reco_devkit import services
from reco_devkit.procs import ServiceProcess, stop_all
from reco_devkit.services import RunSpace
from reco_worker.settings import WorkerSettings

T = TypeVar("T")
ACTIONS = list(ActionType)
POLL_S = 0.1
STACK = Path(__file__).resolve().parents[2] / "scripts" / "stack.sh"
HISTORY_LEN = 50  # the worker's default; every user's events must fit in the fault tests


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    """A trained artifact on the session's ``file://`` store."""

    uri: str
    version: str

    def published(self) -> ModelPublished:
        """The event the trainer sent (or would send) for this artifact."""
        return announcement(open_store(self.uri))


# --------------------------------------------------------------------------- processes


class Launcher:
    """Starts service processes for one test and stops every one of them afterwards."""

    def __init__(self) -> None:
        self.started: list[ServiceProcess] = []

    async def start(self, process: ServiceProcess, *, ready: bool = True) -> ServiceProcess:
        if process not in self.started:
            self.started.append(process)
        process.start()
        if ready:
            await asyncio.to_thread(process.wait_ready, timeout_s=90)
        return process

    async def live(self, process: ServiceProcess) -> ServiceProcess:
        """Start ``process`` and wait only until its HTTP port answers ``/healthz``."""
        await self.start(process, ready=False)
        await asyncio.to_thread(process.wait_ready, timeout_s=90, url=f"{process.base_url}/healthz")
        return process

    def stop(self) -> None:
        stop_all(reversed(self.started), timeout_s=20)


async def start_workers(
    launcher: Launcher, space: RunSpace, count: int, *, model_uri: str | None, **settings: str
) -> list[ServiceProcess]:
    workers = [
        services.worker(space, index=i, model_uri=model_uri, **settings) for i in range(count)
    ]
    start = launcher.start if model_uri else launcher.live
    return list(await asyncio.gather(*(start(w) for w in workers)))


def quick_api(space: RunSpace) -> ServiceProcess:
    """The API without the drain a load balancer needs: these tests stop it when done."""
    return services.api(space, drain_s="0", shutdown_timeout_s="5")


# --------------------------------------------------------------------------- events


def numbered(
    count: int, *, users: Sequence[str], items: Sequence[str], start: datetime
) -> list[UserAction]:
    """Events ``0 … count-1``: event ``n`` is user ``n % len(users)`` acting on a deterministic
    item, dated ``start + n ms`` (never after it is sent, so no clamping of future times)."""
    return [
        UserAction(
            event_id=f"e{n}",
            user_id=users[n % len(users)],
            item_id=items[(n * 37 + n // len(users)) % len(items)],
            action=ACTIONS[n % len(ACTIONS)],
            ts=start + timedelta(milliseconds=n),
        )
        for n in range(count)
    ]


def users_for(shop_users: Sequence[str], *, known: int, cold: int) -> list[str]:
    """``known`` users the model was trained on and ``cold`` ones it has never seen."""
    return [*shop_users[:known], *(f"cold-{n}" for n in range(cold))]


def now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- waiting


async def until(condition: Callable[[], Any], *, what: str, timeout_s: float) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after the bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(POLL_S)


def group_of(space: RunSpace) -> str:
    """The consumer group of the run's workers (as the worker names it)."""
    settings = WorkerSettings(common=CommonSettings(kafka=space.kafka))
    group: str = settings.group_id(space.model_name)
    return group


async def progress(space: RunSpace) -> tuple[int, int]:
    """Offsets the workers committed on ``user-actions`` and the topic's end, summed."""
    kafka = space.kafka
    topic = kafka.topics.user_actions
    partitions = [TopicPartition(topic, p) for p in range(kafka.topics.partitions(topic))]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(group_of(space))
    finally:
        await admin.close()
        await consumer.stop()
    done = sum(committed[tp].offset for tp in partitions if tp in committed)
    return done, sum(ends.values())


async def settled(space: RunSpace, *, sent: int, timeout_s: float) -> None:
    """Every record on the topic (at least ``sent``) committed by the workers: applied."""

    async def done() -> bool:
        committed, end = await progress(space)
        return end >= sent and committed == end

    await until(
        done, what=f"the workers of {space.run_id} to commit all events", timeout_s=timeout_s
    )


# --------------------------------------------------------------------------- state


_USER_KEY = re.compile(r"^:\{u:(?P<user>[^}]*)\}:(?P<kind>rec|hist)(?::(?P<model>.*))?$")


def _user_key_name(name: str) -> str:
    """A user's key (``RedisKeys``, tagged with the user) named as ``:rec:<model>:<user>`` or
    ``:hist:<user>``, so that states compare by user; other keys keep their names."""
    match = _USER_KEY.match(name)
    if match is None:
        return name
    model = f"{match['model']}:" if match["model"] else ""
    return f":{match['kind']}:{model}{match['user']}"


async def snapshot(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every list (without ``computed_at``) and every history under ``prefix``."""
    state: dict[str, Any] = {}
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        name = _user_key_name(key.decode().removeprefix(prefix))
        if name.startswith(":rec:"):
            value = decode_recommendations(await redis.get(key))
            state[name] = {k: v for k, v in asdict(value).items() if k != "computed_at"}
        elif name.startswith(":hist:"):
            state[name] = await redis.zrange(key, 0, -1, withscores=True)
    return state


async def topic_records(space: RunSpace) -> list[Any]:
    """Every record of the run's ``user-actions``, partition by partition, in offset order."""
    kafka = space.kafka
    topic = kafka.topics.user_actions
    partitions = [TopicPartition(topic, p) for p in range(kafka.topics.partitions(topic))]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp, first in (await consumer.beginning_offsets(partitions)).items():
            consumer.seek(tp, first)
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                pytest.fail(f"could not read {topic} to its end within 60 s")
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


async def copy_topic(records: Sequence[Any], target: RunSpace) -> None:
    """``records`` onto the target run's ``user-actions``: same keys, values and timestamps,
    hence the same partitions, in the same order within each partition."""
    kafka = target.kafka
    await ensure_topics(kafka, kafka.topics.user_actions)
    producer = await start_producer(kafka)
    try:
        sends = [
            await producer.send(
                kafka.topics.user_actions, r.value, key=r.key, timestamp_ms=r.timestamp
            )
            for r in records
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def assert_every_event_sent(records: Sequence[Any], events: Sequence[UserAction]) -> None:
    """The topic holds each numbered event (at least once: a re-sent one may be there twice)."""
    on_topic = {decode(UserAction, r.value).event_id for r in records}
    missing = [e.event_id for e in events if e.event_id not in on_topic]
    assert not missing, f"never reached the topic: {missing[:5]}"


async def kafka_answers(space: RunSpace, *, timeout_s: float = 90.0) -> None:
    """Wait until the broker answers (the shared stack may be restarting under another test)."""

    async def answers() -> bool:
        try:
            await ensure_topics(space.kafka, space.kafka.topics.user_actions)
        except KafkaUnavailableError:
            return False
        return True

    await until(answers, what="Kafka to answer", timeout_s=timeout_s)


async def clean_replay(
    space: RunSpace, records: Sequence[Any], models: Sequence[Model], *, redis: Redis, root: Path
) -> dict[str, dict[str, Any]]:
    """The state one clean worker per model reaches from ``records`` (the run's topic)."""
    await kafka_answers(space)
    launcher = Launcher()
    try:
        replays = []
        for model in models:
            clean = RunSpace.create(root, label="clean", backends=space.backends)
            await copy_topic(records, clean)
            replays.append((model, clean))
        await asyncio.gather(
            *(
                launcher.start(services.worker(clean, index=0, model_uri=model.uri))
                for model, clean in replays
            )
        )
        for _, clean in replays:
            await settled(clean, sent=len(records), timeout_s=90)
        return {m.version: await snapshot(redis, clean.key_prefix) for m, clean in replays}
    finally:
        launcher.stop()


def assert_same_state(actual: dict[str, Any], expected: dict[str, dict[str, Any]]) -> None:
    """``actual`` equals the clean replay: each list that of the version it is stamped with."""
    some = next(iter(expected.values()))
    assert sorted(actual) == sorted(some), "the run has other keys than the clean replay"
    for key, value in actual.items():
        if key.startswith(":hist:"):
            assert value == some[key], f"history {key} differs from the clean replay"
        else:
            version = value["model_version"]
            assert version in expected, f"{key} is stamped with an unknown version {version}"
            assert value == expected[version][key], f"{key} differs from the clean replay"


def assert_every_event_applied(
    actual: dict[str, Any], events: Sequence[UserAction], *, history_len: int
) -> None:
    """Each user's history holds each of their numbered events (fewer than ``history_len``)."""
    by_user: dict[str, set[str]] = {}
    for event in events:
        by_user.setdefault(event.user_id, set()).add(event.event_id)
    for user, ids in by_user.items():
        assert len(ids) <= history_len, "the test must keep every event in the bounded history"
        members = actual.get(f":hist:{user}", [])
        seen = {decode_history_member(member, score).event_id for member, score in members}
        assert seen == ids, f"{user}: events {sorted(ids - seen)[:5]} lost"


async def assert_clean_run(
    space: RunSpace,
    events: Sequence[UserAction],
    models: Sequence[Model],
    *,
    redis: Redis,
    root: Path,
    history_len: int,
    settle_s: float,
) -> None:
    """The run's end (Jepsen's pattern): every record committed by the workers, each numbered
    event on the topic and in its user's history, and the Redis state equal to the clean replay
    of the topic by one worker per model."""
    await settled(space, sent=len(events), timeout_s=settle_s)
    actual = await snapshot(redis, space.key_prefix)
    assert_every_event_applied(actual, events, history_len=history_len)
    records = await topic_records(space)
    assert_every_event_sent(records, events)
    expected = await clean_replay(space, records, models, redis=redis, root=root)
    assert_same_state(actual, expected)
