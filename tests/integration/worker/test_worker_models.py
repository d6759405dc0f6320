"""Model control on the real stack: hot swap under load, corrupt models refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from worker_stack import MODEL, N_USERS, corrupt, pinned, publish, running, until

from reco_common.artifact import Manifest, announcement
from reco_common.contracts import (
    ActionType,
    ObjectLayout,
    UserAction,
    decode,
    decode_recommendations,
    encode,
)
from reco_common.kafka import publish as publish_event
from reco_common.redis_store import read_active, read_list
from reco_common.settings import KafkaSettings, RedisSettings
from reco_common.storage import ObjectStore
from reco_worker.settings import WorkerSettings

TROUBLE = (
    "reco_worker_errors_total",
    "reco_worker_batch_failures_total",
    "reco_worker_handler_retries_total",
    "reco_worker_dead_lettered_total",
)


def trouble() -> float:
    """Every error-like counter of the worker, summed (the registry is process-wide)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name in TROUBLE
    )


def action(n: int, *, tag: str = "e") -> UserAction:
    return UserAction(
        event_id=f"{tag}{n}",
        user_id=f"u{n % N_USERS}",
        item_id=f"i{(n * 13) % 400}",
        action=ActionType.VIEW,
        ts=datetime.now(UTC),
    )


async def test_a_hot_swap_under_load_completes_without_errors(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    s3_store: ObjectStore,
    producer: AIOKafkaProducer,
    redis: Redis,
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
) -> None:
    model_v2 = publish(s3_store, "v2", seed=2)
    topic = kafka_settings.topics.user_actions
    keys = redis_settings.keys
    before = trouble()
    swapped = asyncio.Event()

    async def load() -> None:
        """A steady stream that lasts until well after the swap."""
        n = 0
        after_swap = 0
        while after_swap < 200 and n < 20_000:
            event = action(n)
            await publish_event(producer, topic, event.user_id, event)
            n += 1
            after_swap += swapped.is_set()

    async with running(make_settings(model_v1)) as worker:
        stream = asyncio.create_task(load())
        await until(lambda: read_list(redis, keys, MODEL, "u1"), what="lists under v1")
        reply = await worker.http.post("/v1/model", json=pinned(s3_store, model_v2))
        assert reply.status_code == 202

        async def serving_v2() -> bool:
            return (await worker.http.get("/v1/model")).json()["version"] == "v2"

        await until(serving_v2, what="the swap to v2")
        swapped.set()
        await stream
        finals = [action(n, tag="final") for n in range(N_USERS)]
        for event in finals:
            await publish_event(producer, topic, event.user_id, event)

        async def all_final() -> bool:
            values = await redis.mget([keys.recommendations(MODEL, e.user_id) for e in finals])
            lists = [decode_recommendations(v) for v in values if v is not None]
            return len(lists) == N_USERS and all(x.event_id.startswith("final") for x in lists)

        await until(all_final, what="the lists after the swap")
        values = await redis.mget([keys.recommendations(MODEL, e.user_id) for e in finals])
        assert {decode_recommendations(v).model_version for v in values} == {"v2"}
        assert (await worker.ready()) is True
    # Loading a model is not activating it: the controller does that once the rollout succeeded.
    assert await read_active(redis, keys, MODEL) is None
    assert trouble() == before


async def test_a_corrupt_model_is_refused_and_the_old_one_kept(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    s3_store: ObjectStore,
    producer: AIOKafkaProducer,
    redis: Redis,
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
) -> None:
    broken = publish(s3_store, "v2", seed=2)
    corrupt(s3_store, broken)
    other = publish(s3_store, "v1", model_name="other")
    async with running(make_settings(model_v1)) as worker:
        for uri, reason in ((broken, "sha256"), (other, "'other' is not 'shop'")):
            reply = await worker.http.post("/v1/model", json=pinned(s3_store, uri))
            assert reply.status_code == 202

            async def refused(uri: str = uri) -> bool:
                state = (await worker.http.get("/v1/model")).json()
                return (
                    state["loading"] is None and (state["last_error"] or {}).get("model_uri") == uri
                )

            await until(refused, what=f"{uri} to be refused")
            state = (await worker.http.get("/v1/model")).json()
            assert reason in state["last_error"]["error"]
            assert (state["version"], state["model_uri"]) == ("v1", model_v1)
            assert await worker.ready()
        event = action(0)
        await publish_event(producer, kafka_settings.topics.user_actions, event.user_id, event)
        await until(
            lambda: read_list(redis, redis_settings.keys, MODEL, event.user_id), what="a list"
        )
        listed = await read_list(redis, redis_settings.keys, MODEL, event.user_id)
        assert listed is not None
        assert listed.model_version == "v1"


async def test_a_worker_started_on_a_corrupt_model_stays_not_ready(
    make_settings: Callable[..., WorkerSettings],
    model_v1: str,
    s3_store: ObjectStore,
    redis: Redis,
    redis_settings: RedisSettings,
) -> None:
    broken = publish(s3_store, "v2", seed=2)
    corrupt(s3_store, broken)
    async with running(make_settings(broken), wait_ready=False) as worker:

        async def refused() -> bool:
            return (await worker.http.get("/v1/model")).json()["last_error"] is not None

        await until(refused, what="the refusal")
        readiness = await worker.http.get("/readyz")
        assert readiness.status_code == 503
        assert readiness.json()["checks"]["model"] is False
        assert (await worker.http.get("/v1/model")).json()["version"] is None
        assert await read_active(redis, redis_settings.keys, MODEL) is None
        # The model state is not for everyone who reaches the port: no token, no answer.
        anonymous = await worker.http.get("/v1/model", headers={"Authorization": "Bearer"})
        assert anonymous.status_code == 401

        # A load without the announcement's pin is refused; a good model, pinned, makes it ready.
        unpinned = await worker.http.post("/v1/model", json={"model_uri": model_v1})
        assert unpinned.status_code == 422
        assert (
            await worker.http.post("/v1/model", json=pinned(s3_store, model_v1))
        ).status_code == 202
        await until(worker.ready, what="readiness with a good model")


async def test_a_pinned_load_refuses_an_artifact_rewritten_after_its_announcement(
    make_settings: Callable[..., WorkerSettings], model_v1: str, s3_store: ObjectStore
) -> None:
    """Checksums from the same place as the files prove only self-consistency: a writer with the
    store's credentials rewrites manifest and files alike. The announced pin is what holds."""
    rewritten = publish(s3_store, "v2", seed=2)
    artifact = s3_store.below(rewritten.removeprefix(s3_store.root_uri + "/"))
    pin = announcement(artifact).manifest_sha256
    manifest = decode(Manifest, artifact.get_bytes(ObjectLayout.MANIFEST))
    artifact.put_bytes(
        ObjectLayout.MANIFEST, encode(msgspec.structs.replace(manifest, params={"evil": True}))
    )
    async with running(make_settings(model_v1)) as worker:
        body = {"model_uri": rewritten, "manifest_sha256": pin}
        assert (await worker.http.post("/v1/model", json=body)).status_code == 202

        async def refused() -> bool:
            return (await worker.http.get("/v1/model")).json()["last_error"] is not None

        await until(refused, what="the refusal")
        state = (await worker.http.get("/v1/model")).json()
        assert "not the published" in state["last_error"]["error"]
        assert state["version"] == "v1"
