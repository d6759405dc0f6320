"""Elastic workers: real worker processes scaled 1 → 4 → 2 under a steady stream lose nothing.

What an autoscaler (deploy/k8s/components/elastic-workers) does to the worker Deployment, done
by hand on processes: numbered events stream into ``user-actions`` the whole time; one worker
consumes, three more are started (the group rebalances, each of the four gets partitions and
consumes), then two of them, the first one among them, get SIGTERM as Kubernetes sends it on a
scale-down (each finishes its batch, commits and leaves the group; exit code 0), and the two
left take over. The final Redis state equals a clean pass of the same events through one worker
(Jepsen's pattern, as in test_worker_pipeline.py): nothing lost, nothing applied twice in effect.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from worker_stack import (
    N_USERS,
    all_applied,
    clean_pass,
    free_port,
    group_members,
    labelled,
    metric,
    namespaced,
    numbered,
    produce,
    snapshot,
    until,
    worker_process,
)

from reco_common.contracts import PARTITIONS, Topics, UserAction
from reco_worker.settings import WorkerSettings

CHUNK = 5  # events per 20 ms: a steady ~200 events/s at most
CONSUMED = "reco_worker_events_consumed_total"
LAG = "reco_worker_consumer_lag_records"
HISTORY_LEN = 1000  # the most a worker keeps per user


@dataclass
class Member:
    """A worker process and its HTTP port."""

    process: asyncio.subprocess.Process
    http: httpx.AsyncClient

    async def ready(self) -> bool:
        try:
            return (await self.http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def consumed(self) -> float:
        return await metric(self.http, CONSUMED)

    async def terminate(self, settings: WorkerSettings) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code once the drain is over."""
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout=settings.grace_s + 10)


@asynccontextmanager
async def member(settings: WorkerSettings, name: str, where: Path) -> AsyncIterator[Member]:
    own = settings.model_copy(update={"http_port": free_port(), "cache_dir": where / name})
    base = f"http://127.0.0.1:{own.http_port}"
    async with (
        worker_process(own, where / f"{name}.log") as process,
        httpx.AsyncClient(base_url=base, timeout=5) as http,
    ):
        yield Member(process, http)


async def stream(
    producer: AIOKafkaProducer, topic: str, sent: list[UserAction], stop: asyncio.Event
) -> None:
    """Numbered events, ``CHUNK`` every 20 ms, until ``stop``; ``sent`` lists them."""
    while not stop.is_set():
        chunk = [numbered(len(sent) + k) for k in range(CHUNK)]
        await produce(producer, topic, chunk, chunk=CHUNK)
        sent.extend(chunk)


async def group_is(settings: WorkerSettings, members: int) -> bool:
    return await group_members(settings) == ("Stable", members)


async def all_consume(members: list[Member], since: list[float]) -> bool:
    """Every member consumed more than it had at ``since``: each has partitions and works."""
    now = [await m.consumed() for m in members]
    return all(n > s for n, s in zip(now, since, strict=True))


@pytest.mark.timeout(150)
async def test_workers_scaled_1_4_2_under_a_steady_stream_lose_nothing(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    tmp_path: Path,
) -> None:
    # Histories long enough to keep every event of the run: the comparison covers them all.
    reference = make_settings(model_v1, history_len=HISTORY_LEN)
    settings = namespaced(reference, "e", max_batch=50, session_timeout_s=6.0)
    topic = settings.common.kafka.topics.user_actions
    sent: list[UserAction] = []
    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(member(settings, "w0", tmp_path))
        await until(first.ready, what="the first worker to be ready")
        streaming = asyncio.create_task(stream(producer, topic, sent, stop))
        try:
            await until(lambda: all_consume([first], [0.0]), what="the first worker to consume")

            # 1 → 4: three more members; the group rebalances and all four consume.
            added = [
                await stack.enter_async_context(member(settings, f"w{n}", tmp_path))
                for n in (1, 2, 3)
            ]
            four = [first, *added]
            await until(lambda: group_is(settings, 4), what="a stable group of four")
            since = [await m.consumed() for m in four]
            await until(lambda: all_consume(four, since), what="each of the four to consume")
            # The first worker reports lag for the partitions it kept only, not for those that
            # moved (a stale series would be summed beside the new owner's).
            lag = await labelled(first.http, LAG)
            assert 0 < len(lag) <= PARTITIONS[Topics().user_actions] // 4, lag

            # 4 → 2: SIGTERM to two of them (the first among them), as a scale-down does.
            leaving, staying = [first, added[0]], added[1:]
            codes = await asyncio.gather(*(m.terminate(settings) for m in leaving))
            assert codes == [0, 0], "a graceful stop exits 0 after its drain"
            await until(lambda: group_is(settings, 2), what="a stable group of two")
            since = [await m.consumed() for m in staying]
            await until(lambda: all_consume(staying, since), what="the two left to consume")
        finally:
            stop.set()
            await streaming
        await until(lambda: all_applied(redis, settings, sent), what="every event applied")
        assert [await m.terminate(settings) for m in staying] == [0, 0]
    assert 20 * CHUNK < len(sent) <= HISTORY_LEN * N_USERS  # no history was trimmed

    clean = await clean_pass(reference, sent, producer, redis)
    assert len(clean) == 2 * N_USERS  # a list and a history each
    assert sum(len(v) for k, v in clean.items() if k.endswith(":hist")) == len(sent)
    assert await snapshot(redis, settings.common.redis.key_prefix) == clean
