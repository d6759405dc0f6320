"""Faults while user actions stream; each run ends in the state of a clean replay of its events.

Each test has its own run (topic and key prefixes): two workers on model v1 (batches of at most
50 events, so that a fault lands between many commits), 960 numbered events from 60 users
(10 of them unknown to the model) streamed at a steady rate, one fault a third of the way in.
Then: every record committed, each numbered event in its user's history, and the Redis state
equal to the one a clean worker computes from the same topic (Jepsen's pattern).

Restarting the shared Kafka and Redis disturbs whatever else runs on the dev stack, so those
restarts happen in this module only, one at a time, and the stack is brought back up whatever
happens.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    HISTORY_LEN,
    STACK,
    Launcher,
    Model,
    assert_clean_run,
    now,
    numbered,
    snapshot,
    start_workers,
    until,
    users_for,
)
from redis.asyncio import Redis

from reco_common.kafka import publish, start_producer
from reco_devkit import services
from reco_devkit.observe import ModelTopics, active_version
from reco_devkit.procs import ServiceProcess
from reco_devkit.services import RunSpace
from reco_devkit.traffic import ActionSender, ShopFiles, stream

N_EVENTS = 960
RATE = 160.0  # events/s: the stream lasts about 6 s
FAULT_AT = N_EVENTS // 3
SETTLE_S = 90.0


class FaultRun:
    """One run under a fault: workers, the numbered events, the stream, the final checks."""

    def __init__(
        self, space: RunSpace, launcher: Launcher, models: tuple[Model, Model], shop: ShopFiles
    ) -> None:
        self.space = space
        self.launcher = launcher
        self.models = models
        users = users_for(shop.users, known=50, cold=10)
        items = [*shop.items, "unknown-item-1", "unknown-item-2"]
        self.events = numbered(N_EVENTS, users=users, items=items, start=now())
        self.workers: list[ServiceProcess] = []
        self.sender: ActionSender | None = None

    async def start_workers(self, count: int = 2) -> list[ServiceProcess]:
        self.workers = await start_workers(
            self.launcher, self.space, count, model_uri=self.models[0].uri, max_batch="50"
        )
        return self.workers

    @asynccontextmanager
    async def streaming(self) -> AsyncIterator[None]:
        """Stream every event while the body runs; the body starts once the first third is out."""
        async with ActionSender(self.space.kafka) as sender:
            self.sender = sender
            task = asyncio.create_task(stream(sender, self.events, rate=RATE))
            await until(
                lambda: task.done() or sender.sent >= FAULT_AT,
                what="a third of the events sent",
                timeout_s=60,
            )
            try:
                yield
            finally:
                await asyncio.wait_for(task, timeout=180)

    async def verify(self, redis: Redis, root: Path, *, models: tuple[Model, ...]) -> None:
        await assert_clean_run(
            self.space,
            self.events,
            models,
            redis=redis,
            root=root,
            history_len=HISTORY_LEN,
            settle_s=SETTLE_S,
        )


@pytest.fixture
def run(
    space: RunSpace, launcher: Launcher, models: tuple[Model, Model], shop: ShopFiles
) -> FaultRun:
    return FaultRun(space, launcher, models, shop)


@pytest.fixture
def restores_stack() -> Iterator[None]:
    """Whatever happens in the test, the shared stack runs again afterwards."""
    try:
        yield
    finally:
        subprocess.run([str(STACK), "up"], check=True, timeout=300)


async def restart(component: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(STACK), "restart", component, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode == 0, err.decode()


async def test_a_worker_killed_mid_stream(
    run: FaultRun, redis: Redis, e2e_root: Path, models: tuple[Model, Model]
) -> None:
    victim, _ = await run.start_workers()
    async with run.streaming():
        victim.kill()
        await asyncio.sleep(1.0)
        await run.launcher.start(victim)  # the same worker again: same port, same group
    assert victim.running()
    await run.verify(redis, e2e_root, models=models[:1])


async def test_redis_restarted_mid_stream(
    run: FaultRun, redis: Redis, e2e_root: Path, models: tuple[Model, Model], restores_stack: None
) -> None:
    await run.start_workers()
    async with run.streaming():
        await restart("redis")
    await run.verify(redis, e2e_root, models=models[:1])


@pytest.mark.timeout(300)  # the broker's JVM stops and starts again: up to a minute here
async def test_the_kafka_broker_restarted_mid_stream(
    run: FaultRun, redis: Redis, e2e_root: Path, models: tuple[Model, Model], restores_stack: None
) -> None:
    await run.start_workers()
    async with run.streaming():
        await restart("kafka")
    await run.verify(redis, e2e_root, models=models[:1])


async def test_a_model_rollout_mid_stream(
    run: FaultRun, redis: Redis, e2e_root: Path, models: tuple[Model, Model], space: RunSpace
) -> None:
    workers = await run.start_workers()
    # Two seeds of the same data: the gate is the controller tests' business, not this one's.
    await run.launcher.start(services.local_controller(space, workers, max_regression="0.5"))
    second = models[1].published()
    topics = ModelTopics(space.kafka)
    await topics.start()
    try:
        async with run.streaming():
            producer = await start_producer(space.kafka)
            try:
                await publish(producer, space.kafka.topics.model_published, "shop", second)
            finally:
                await producer.stop()
            await topics.wait_for(second.version, "succeeded", timeout_s=60)
    finally:
        await topics.stop()
    await run.verify(redis, e2e_root, models=models)
    stamped = {
        value["model_version"]
        for key, value in (await snapshot(redis, space.key_prefix)).items()
        if key.startswith(":rec:")
    }
    assert second.version in stamped


class ReadinessRespectingLoad:
    """Clients asking for lists on keep-alive connections until the API stops being ready,
    as a load balancer behind a readiness probe would have them do."""

    def __init__(self, base_url: str, users: list[str], *, clients: int = 6) -> None:
        self.base_url = base_url
        self.users = users
        self.clients = clients
        self.stop = asyncio.Event()
        self.outcomes: list[int | str] = []

    async def run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(self.clients)))

    async def _client(self, n: int) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as http:
            for request in range(100_000):
                if self.stop.is_set():
                    return
                user = self.users[(n * 7 + request) % len(self.users)]
                try:
                    response = await http.get(f"/v1/users/{user}/recommendations")
                    self.outcomes.append(response.status_code)
                except httpx.HTTPError as exc:
                    self.outcomes.append(repr(exc))

    async def watch_readiness(self, *, timeout_s: float) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as http:
            await until(
                lambda: self._not_ready(http), what="/readyz to turn 503", timeout_s=timeout_s
            )
        self.stop.set()

    @staticmethod
    async def _not_ready(http: httpx.AsyncClient) -> bool:
        try:
            return (await http.get("/readyz")).status_code != 200
        except httpx.HTTPError:
            return True


async def test_the_api_sigterm_under_load(
    run: FaultRun, redis: Redis, e2e_root: Path, models: tuple[Model, Model], space: RunSpace
) -> None:
    workers = await run.start_workers()
    # The controller activates the workers' model (its active record and fallback list), as in
    # production: an API without that record answers 503 for the default model.
    await run.launcher.start(services.local_controller(space, workers, activation_check_s="0.5"))
    await until(
        lambda: active_version(redis, space.redis, space.model_name),
        what="the workers' model activated",
        timeout_s=60,
    )
    api = await run.launcher.start(services.api(space, drain_s="2", shutdown_timeout_s="8"))
    assert api.base_url is not None
    load = ReadinessRespectingLoad(api.base_url, sorted({e.user_id for e in run.events}))
    async with run.streaming():
        requests = asyncio.create_task(load.run())
        await until(lambda: len(load.outcomes) >= 200, what="200 answers", timeout_s=60)
        watching = asyncio.create_task(load.watch_readiness(timeout_s=30))
        api.send_sigterm()
        await watching
        await requests
    exit_code = await asyncio.to_thread(api.wait, timeout_s=20)

    assert [o for o in load.outcomes if o != 200] == []
    assert exit_code == 0
    await run.verify(redis, e2e_root, models=models[:1])
