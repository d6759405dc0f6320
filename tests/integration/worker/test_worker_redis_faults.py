"""The worker against a Redis of its own (started here, on another port): writes refused."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.exceptions import RedisError
from worker_stack import all_applied, free_port, metric, numbered, produce, running, until

from reco_common.redis_store import connect
from reco_common.settings import RedisSettings
from reco_worker.settings import WorkerSettings


@pytest.fixture
async def own_redis(tmp_path: Path, unique: str) -> AsyncIterator[RedisSettings]:
    """A throw-away ``redis-server`` (Debian's binary), so that faults touch no one else."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        binary,
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
        *("--dir", str(tmp_path)),
        stdout=asyncio.subprocess.DEVNULL,
    )
    settings = RedisSettings(url=f"redis://127.0.0.1:{port}/0", key_prefix=f"t{unique}")
    client = connect(settings)
    try:

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except (RedisError, OSError):
                return False

        await until(answers, what="the test's own redis-server")
        yield settings
    finally:
        await client.aclose()
        process.terminate()
        await process.wait()


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
