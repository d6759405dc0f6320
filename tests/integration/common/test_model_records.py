"""The controller's fenced records on the real Redis: the server-side script refuses a write
from an older epoch of the same lineage, atomically with the write it guards."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

from redis.asyncio import Redis

from reco_common.contracts import ActiveModel, LocalRollout, ModelRef
from reco_common.redis_store import Epoch, ModelRecords
from reco_common.settings import RedisSettings

MODEL = "shop"


def _active(version: str) -> ActiveModel:
    return ActiveModel(
        model_name=MODEL,
        version=version,
        artifact_uri=f"s3://reco/models/{MODEL}/{version}",
        activated_at=datetime.now(UTC),
        popular_items=[f"p-{version}"],
        popular_scores=[1.0],
    )


async def test_an_older_epoch_cannot_switch_the_active_record_back(
    redis: Redis, redis_settings: RedisSettings
) -> None:
    records = ModelRecords(redis, redis_settings.keys)
    assert await records.activate(_active("v2"), epoch=Epoch("uid-1", 7))
    assert not await records.activate(_active("v1"), epoch=Epoch("uid-1", 6))
    assert await records.activate(_active("v2"), epoch=Epoch("uid-1", 7)), "equal: written again"
    active = await records.active(MODEL)
    assert active is not None
    assert active.version == "v2"
    assert await redis.exists(redis_settings.keys.popular(MODEL, "v2"))
    assert not await redis.exists(redis_settings.keys.popular(MODEL, "v1")), "nothing of v1"
    # A Deployment deleted and created again starts over at generation 1: a new lineage.
    assert await records.activate(_active("v3"), epoch=Epoch("uid-2", 1))
    active = await records.active(MODEL)
    assert active is not None
    assert active.version == "v3"


async def test_racing_writers_leave_the_newest_epoch(
    redis: Redis, redis_settings: RedisSettings
) -> None:
    records = ModelRecords(redis, redis_settings.keys)
    order = list(range(1, 41))
    random.Random(7).shuffle(order)  # on several connections: any order of arrival
    applied = await asyncio.gather(
        *(records.activate(_active(f"v{n}"), epoch=Epoch("uid", n)) for n in order)
    )
    assert any(applied)
    active = await records.active(MODEL)
    assert active is not None
    assert active.version == "v40"


async def test_the_local_rollout_state_shares_the_fence(
    redis: Redis, redis_settings: RedisSettings
) -> None:
    records = ModelRecords(redis, redis_settings.keys)
    state = LocalRollout(desired=ModelRef(uri="file:///m/v2"), epoch=3)
    assert await records.remember_rollout(MODEL, state, lineage="local")
    assert await records.rollout(MODEL) == state
    assert not await records.activate(_active("v1"), epoch=Epoch("local", 2))
    assert not await records.remember_rollout(MODEL, LocalRollout(epoch=2), lineage="local")
    assert await records.rollout(MODEL) == state
