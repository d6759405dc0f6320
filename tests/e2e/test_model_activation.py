"""The model's active record (the API's fallback and ``model_version``) follows the rollout, not
the workers; the controller's rollout state survives its own death; the API answers through a
Redis that restarts empty. Real processes: workers, the controller (``local`` target), the API.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from e2e_support import (
    Launcher,
    Model,
    now,
    numbered,
    quick_api,
    start_workers,
    until,
    users_for,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from reco_common.contracts import RolloutEvent
from reco_common.kafka import publish, start_producer
from reco_common.redis_store import connect
from reco_common.settings import CommonSettings, RedisSettings
from reco_devkit import services
from reco_devkit.observe import ActiveVersions, ModelTopics, active_version
from reco_devkit.procs import ServiceProcess, free_port
from reco_devkit.services import CONTROL_HEADERS, RunSpace
from reco_devkit.traffic import ActionSender, ShopFiles


async def _serves(worker: ServiceProcess, uri: str) -> bool:
    async with httpx.AsyncClient(headers=CONTROL_HEADERS, timeout=2) as http:
        state = (await http.get(f"{worker.base_url}/v1/model")).json()
    return bool(state["model_uri"] == uri)


async def _active_version(redis: Redis, space: RunSpace) -> str | None:
    return await active_version(redis, space.redis, space.model_name)


async def _rollouts(topics: ModelTopics, version: str) -> list[RolloutEvent]:
    await topics.poll(timeout_ms=200)
    return [e for e in topics.rollouts if e.version == version]


def _unloadable_for(space: RunSpace, worker_index: int, model: Model) -> None:
    """The worker cannot load ``model``: a file where its cache directory would go."""
    blocker = space.root / "cache" / f"worker-{worker_index}" / space.model_name / model.version
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")


def _statuses(topics: ModelTopics, version: str) -> list[str]:
    return [e.status.value for e in topics.rollouts if e.version == version]


@pytest.mark.timeout(360)  # two controller starts, a consumer-group session timeout
async def test_a_failed_rollout_keeps_v1_active_and_is_not_retried_after_a_restart(
    space: RunSpace, launcher: Launcher, models: tuple[Model, Model], redis: Redis
) -> None:
    """Worker 1 cannot load v2: the rollout fails and is rolled back to v1, the active record
    never names v2. The controller is SIGKILLed and started again: v2 published again is not
    retried, because what failed is stored in Redis, not in the dead process."""
    v1, v2 = models
    workers = await start_workers(launcher, space, 2, model_uri=v1.uri)
    _unloadable_for(space, 1, v2)
    settings = {"max_regression": "0.5", "activation_check_s": "0.5"}
    controller = await launcher.start(services.local_controller(space, workers, **settings))
    await until(lambda: _active_version(redis, space), what="v1 activated", timeout_s=30)
    assert await _active_version(redis, space) == v1.version
    topics = ModelTopics(space.kafka)
    await topics.start()
    watch = ActiveVersions(redis, space.redis, space.model_name)
    producer = await start_producer(space.kafka)
    try:
        await publish(producer, space.kafka.topics.model_published, "shop", v2.published())

        async def rolled_back() -> bool:
            await topics.poll(timeout_ms=200)
            return "rolled_back" in _statuses(topics, v2.version)

        await until(rolled_back, what="the rollback", timeout_s=120)
        assert _statuses(topics, v2.version) == ["started", "failed", "rolled_back"]
        for worker in workers:
            await until(partial(_serves, worker, v1.uri), what="back on v1", timeout_s=60)

        controller.kill()
        await launcher.start(controller)  # a new process: nothing of the old one in memory
        await publish(producer, space.kafka.topics.model_published, "shop", v2.published())
        await until(lambda: _decided(controller, "already_failed"), what="refused", timeout_s=90)
        await topics.poll(timeout_ms=500)
        assert _statuses(topics, v2.version) == ["started", "failed", "rolled_back"]
    finally:
        seen = await watch.stop()
        await producer.stop()
        await topics.stop()
    assert seen == {v1.version}, f"the active record named {seen}"


@pytest.mark.timeout(360)
async def test_a_controller_killed_mid_rollout_leaves_v1_active_until_the_next_one_decides(
    space: RunSpace, launcher: Launcher, models: tuple[Model, Model], redis: Redis
) -> None:
    """Both workers already run v2, but the controller, which checks the rollout only every
    30 s here, is SIGKILLed before it saw it complete: the fallback stays v1 (a worker loading
    a model activates nothing). The next controller finds the stored rollout settled on v2 and
    switches the record."""
    v1, v2 = models
    workers = await start_workers(launcher, space, 2, model_uri=v1.uri)
    slow = {"max_regression": "0.5", "activation_check_s": "0.5", "poll_interval_s": "30"}
    first = await launcher.start(services.local_controller(space, workers, **slow))
    await until(lambda: _active_version(redis, space), what="v1 activated", timeout_s=30)
    topics = ModelTopics(space.kafka)
    await topics.start()
    producer = await start_producer(space.kafka)
    try:
        await publish(producer, space.kafka.topics.model_published, "shop", v2.published())
        for worker in workers:
            await until(partial(_serves, worker, v2.uri), what="workers on v2", timeout_s=60)
        await asyncio.sleep(1.5)  # three checks of the keeper: a wrong switch would show
        await topics.poll(timeout_ms=200)
        assert _statuses(topics, v2.version) == ["started"], "not judged complete yet"
        assert await _active_version(redis, space) == v1.version
        first.kill()

        second = services.local_controller(space, workers, activation_check_s="0.5")
        await launcher.start(second)
        await until(lambda: _active_version_is(redis, space, v2.version), what="v2", timeout_s=60)
    finally:
        await producer.stop()
        await topics.stop()


async def _active_version_is(redis: Redis, space: RunSpace, version: str) -> bool:
    return await _active_version(redis, space) == version


async def _decided(controller: ServiceProcess, decision: str) -> bool:
    async with httpx.AsyncClient(timeout=2) as http:
        metrics = (await http.get(f"{controller.base_url}/metrics")).text
    return f'reco_controller_decisions_total{{decision="{decision}"}} 1.0' in metrics


# --------------------------------------------------------------------------- Redis outage


class ScratchRedis:
    """A ``redis-server`` of this test's own on a free port, without persistence: stopping
    and starting it again brings it back empty (the shared one is never touched)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self._argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        self._argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self._argv, stdout=asyncio.subprocess.DEVNULL
        )
        client = Redis.from_url(self.url)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except (RedisError, OSError):
                return False

        try:
            await until(answers, what="the test's redis-server", timeout_s=30)
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


@pytest.fixture
async def scratch_redis(tmp_path: Path) -> AsyncIterator[ScratchRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    server = ScratchRedis(binary, tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


class Traffic:
    """Clients asking one API for random users' lists; every answer's status and source."""

    def __init__(self, api: ServiceProcess, users: list[str], *, clients: int = 3) -> None:
        self.answers: list[tuple[float, int | str, str | None]] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._client(api, users, n)) for n in range(clients)]

    async def _client(self, api: ServiceProcess, users: list[str], n: int) -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=str(api.base_url), timeout=5) as http:
            for request in range(1_000_000):
                if self._stop.is_set():
                    return
                user = users[(n * 7 + request) % len(users)]
                try:
                    response = await http.get(f"/v1/users/{user}/recommendations")
                except httpx.HTTPError as exc:
                    self.answers.append((loop.time(), repr(exc), None))
                    continue
                body = response.json()
                source = body.get("source") if response.status_code == 200 else None
                code = body["error"]["code"] if response.status_code >= 400 else None
                self.answers.append((loop.time(), response.status_code, source or code))
                await asyncio.sleep(0.01)

    def count(self, status: int | str) -> int:
        return sum(1 for _, s, _ in self.answers if s == status)

    async def stop(self) -> Counter[tuple[int | str, str | None]]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return Counter((status, detail) for _, status, detail in self.answers)


@pytest.mark.timeout(300)
async def test_the_api_through_a_redis_restarted_empty_answers_200_or_a_bounded_503(
    e2e_root: Path,
    launcher: Launcher,
    models: tuple[Model, Model],
    shop: ShopFiles,
    scratch_redis: ScratchRedis,
) -> None:
    """Redis is killed mid-traffic and comes back empty. An API that served the model before,
    and one started during the outage (it never saw the model), answer only 200 (personalized
    or fallback) or 503, never 404 for the model they serve; 503 stops within a bound once
    Redis is back, the controller writes the active record again and the worker rebuilds."""
    backends = CommonSettings(redis=RedisSettings(url=scratch_redis.url))
    space = RunSpace.create(e2e_root, label="outage", backends=backends)
    redis = connect(space.redis)
    workers = await start_workers(
        launcher, space, 1, model_uri=models[0].uri, generation_check_s="0.5"
    )
    await launcher.start(
        services.local_controller(space, workers, activation_check_s="2", max_regression="0.5")
    )
    first = await launcher.start(quick_api(space))
    await until(lambda: _active_version(redis, space), what="the active record", timeout_s=30)
    users = users_for(shop.users, known=30, cold=10)
    async with ActionSender(space.kafka) as sender:
        await sender.send(numbered(120, users=users[:20], items=shop.items, start=now()))

    traffic = Traffic(first, users)
    try:
        await until(lambda: traffic.count(200) >= 100, what="answers before", timeout_s=60)
        await scratch_redis.kill()
        await until(lambda: traffic.count(503) >= 10, what="503 while down", timeout_s=30)
        second_api = services.api(space, name="api-2", drain_s="0", shutdown_timeout_s="5")
        await launcher.live(second_api)  # started while Redis is down: it never saw the model
        fresh = Traffic(second_api, users)
        await scratch_redis.start()  # empty
        loop = asyncio.get_running_loop()
        await until(lambda: _active_version(redis, space), what="the record back", timeout_s=60)
        restored = loop.time()
        await asyncio.sleep(2.0)

        async def personalized_again() -> bool:
            return any(d == "personalized" for t, _, d in traffic.answers if t > restored)

        await until(personalized_again, what="the rebuilt lists", timeout_s=90)
    finally:
        counts = await traffic.stop()
        fresh_counts = await fresh.stop() if "fresh" in locals() else Counter()
        await redis.aclose()

    for name, answers, seen in (("first", traffic, counts), ("fresh", fresh, fresh_counts)):
        statuses = {status for status, _ in seen}
        assert statuses <= {200, 503}, f"{name} API answered {seen}"
        late = [a for a in answers.answers if a[0] > restored + 1.0 and a[1] != 200]
        assert not late, f"{name} API still failing 1 s after the record was back: {late[:5]}"
    assert counts[(200, "fallback")]
    assert counts[(200, "personalized")]
