"""The worker against a Redis of its own (started here, on another port): writes refused, and
the server restarted without its data mid-stream."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import RedisError
from worker_stack import (
    all_applied,
    free_port,
    metric,
    namespaced,
    numbered,
    produce,
    running,
    snapshot,
    until,
)

from reco_common.redis_store import connect
from reco_common.settings import RedisSettings
from reco_worker.settings import WorkerSettings


class OwnRedis:
    """A throw-away ``redis-server`` (Debian's binary) on a port of its own, without
    persistence, so that faults touch no one else; ``restart`` brings it back empty."""

    def __init__(self, binary: str, workdir: Path, unique: str) -> None:
        self._command = [binary, "--port", str(free_port()), "--bind", "127.0.0.1"]
        self._command += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
        self.settings = RedisSettings(
            url=f"redis://127.0.0.1:{self._command[2]}/0", key_prefix=f"t{unique}"
        )
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self._command, stdout=asyncio.subprocess.DEVNULL
        )
        client = connect(self.settings)

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except (RedisError, OSError):
                return False

        try:
            await until(answers, what="the test's own redis-server")
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
async def own_server(tmp_path: Path, unique: str) -> AsyncIterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    server = OwnRedis(binary, tmp_path, unique)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def own_redis(own_server: OwnRedis) -> RedisSettings:
    return own_server.settings


async def test_a_worker_whose_writes_fail_turns_not_ready_until_they_succeed(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    own_redis: RedisSettings,
) -> None:
    base = make_settings(model_v1)
    settings = base.model_copy(
        update={"common": base.common.model_copy(update={"redis": own_redis})}
    )
    events = [numbered(n) for n in range(200)]
    redis: Redis = connect(own_redis)
    try:
        async with running(settings) as worker:
            # Every write is refused from now on, as by a full Redis under noeviction.
            await redis.config_set("maxmemory", 1)
            await produce(producer, settings.common.kafka.topics.user_actions, events)

            async def not_ready() -> bool:
                return not await worker.ready()

            await until(not_ready, what="the worker to turn not ready")
            body = (await worker.http.get("/readyz")).json()
            assert body["checks"]["redis_writes"] is False
            assert body["checks"]["redis"] is True  # PING still answers: not enough
            assert await metric(worker.http, "reco_worker_redis_writable") == 0

            await redis.config_set("maxmemory", 0)
            await until(lambda: all_applied(redis, settings, events), what="the writes to resume")
            await until(worker.ready, what="the worker to be ready again")
            assert await metric(worker.http, "reco_worker_redis_writable") == 1
    finally:
        await redis.aclose()


async def test_redis_restarted_without_its_data_mid_stream_is_rebuilt(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    redis_settings: RedisSettings,
    own_server: OwnRedis,
) -> None:
    events = [numbered(n) for n in range(1200)]
    clean_settings = make_settings(model_v1)
    async with running(clean_settings):  # the clean pass, on the shared Redis
        await produce(producer, clean_settings.common.kafka.topics.user_actions, events)
        await until(lambda: all_applied(redis, clean_settings, events), what="the clean pass")
    clean = await snapshot(redis, redis_settings.key_prefix)

    base = namespaced(clean_settings, "r", generation_check_s=0.5, max_batch=50)
    own = own_server.settings.model_copy(update={"key_prefix": base.common.redis.key_prefix})
    settings = base.model_copy(update={"common": base.common.model_copy(update={"redis": own})})
    topic = settings.common.kafka.topics.user_actions
    client = connect(own)
    try:
        async with running(settings):
            await produce(producer, topic, events[:600])
            await until(lambda: all_applied(client, settings, events[:600]), what="the first half")
            trickle = asyncio.create_task(produce(producer, topic, events[600:], chunk=20))
            await own_server.restart()  # empty: no RDB, no AOF
            await trickle

            async def recovered() -> bool:
                try:
                    return await all_applied(client, settings, events)
                except RedisError:  # our own pooled connection did not survive the restart
                    return False

            await until(recovered, what="the recovery")
        assert await snapshot(client, own.key_prefix) == clean
    finally:
        await client.aclose()
