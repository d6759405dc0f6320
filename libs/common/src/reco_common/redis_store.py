"""Redis on ``redis.asyncio``: the served lists and the active-model record, written by the
worker and read by the API, both through the contract's codec.

A user's list is one JSON value under one key, so replacing it is a single atomic ``SET``: a
reader sees the old list or the new one, never a partial or empty one. The API's read is one
round trip (``MGET`` of the user's list and the model's active record with its fallback), whose
two values are decoded separately: a corrupt list falls back, a corrupt model record does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from reco_common.contracts import ActiveModel, RecommendationList, RedisKeys, S, decode, encode
from reco_common.settings import RedisSettings


def connect(settings: RedisSettings, *, timeout_s: float | None = None) -> Redis:
    """A pooled client; no I/O happens until the first command."""
    timeout = timeout_s or settings.socket_timeout_s
    return Redis.from_url(
        settings.url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=settings.max_connections,
        health_check_interval=30,
    )


async def replace_lists(
    redis: Redis, keys: RedisKeys, model_name: str, lists: Mapping[str, RecommendationList]
) -> None:
    """Replace many users' lists with one ``MSET`` (atomic; one command however many lists).

    One command rather than a pipeline of ``SET``: redis-py spends ~50 µs of CPU per command,
    which showed up in the worker's batches of hundreds of users.
    """
    if lists:
        await redis.mset(
            {keys.recommendations(model_name, user): encode(value) for user, value in lists.items()}
        )


async def activate_model(redis: Redis, keys: RedisKeys, active: ActiveModel) -> None:
    """Record ``active`` as the model's served version, with its popular list for the fallback."""
    payload = encode(active)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.popular(active.model_name, active.version), payload)
        pipe.set(keys.active_model(active.model_name), payload)
        await pipe.execute()


@dataclass(frozen=True, slots=True)
class ServedView:
    """What the API needs for one request, read in one round trip; each value is decoded on
    its own, raising :class:`reco_common.contracts.ContractError` when it is corrupt."""

    recommendations: bytes | str | None
    active: bytes | str | None

    def recommendation_list(self) -> RecommendationList | None:
        return _decoded(RecommendationList, self.recommendations)

    def active_model(self) -> ActiveModel | None:
        return _decoded(ActiveModel, self.active)


def _decoded(model: type[S], raw: bytes | str | None) -> S | None:
    return None if raw is None else decode(model, raw)


async def read_served(redis: Redis, keys: RedisKeys, model_name: str, user_id: str) -> ServedView:
    rec, active = await redis.mget(
        keys.recommendations(model_name, user_id), keys.active_model(model_name)
    )
    return ServedView(rec, active)


async def read_active(redis: Redis, keys: RedisKeys, model_name: str) -> ActiveModel | None:
    return _decoded(ActiveModel, await redis.get(keys.active_model(model_name)))


async def read_list(
    redis: Redis, keys: RedisKeys, model_name: str, user_id: str
) -> RecommendationList | None:
    return _decoded(RecommendationList, await redis.get(keys.recommendations(model_name, user_id)))
