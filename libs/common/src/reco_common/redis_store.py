"""Redis on ``redis.asyncio``: the served lists and the active-model record, written by the
worker and read by the API, both through the contract's codec.

A user's list is one JSON value under one key, so replacing it is a single atomic ``SET``: a
reader sees the old list or the new one, never a partial or empty one. The API's read is one
round trip (``MGET`` of the user's list and the model's active record with its fallback), whose
two values are decoded separately: a corrupt list falls back, a corrupt model record does not.

The worker's writes are *fenced*: each carries the log position (``user-actions`` partition and
offset) of the event that caused it, and a server-side script applies it only when that position
is newer than the one recorded in the user's ``fence`` hash, in the same atomic step. A worker
that lost its partitions while it held a batch (paused, stalled, slower than the rebalance) can
then never overwrite the newer list of the partition's new owner, whatever its timing. The topic
is keyed by user, so one user's events are ordered within one partition and positions are
compared per partition. The scripts take already-encoded values: they do not depend on a codec.
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

    Unfenced: for seeding lists (tests, benchmarks); the worker writes through ``FencedLists``.

    One command rather than a pipeline of ``SET``: redis-py spends ~50 µs of CPU per command,
    which showed up in the worker's batches of hundreds of users.
    """
    if lists:
        await redis.mset(
            {keys.recommendations(model_name, user): encode(value) for user, value in lists.items()}
        )


@dataclass(frozen=True, slots=True)
class Position:
    """Where a write comes from: the partition and offset of its newest event in the log."""

    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class FencedWrite:
    """An already-encoded value and the log position it reflects."""

    value: bytes
    position: Position


# KEYS: per user its list key, then its fence key. ARGV[1]: the fence field prefix
# ("rec:<model>:"), then per user: partition, offset, encoded list. A list is set (and its offset
# recorded) only when its offset is greater than the one recorded for its partition. Returns how
# many lists were refused as stale.
_REPLACE_IF_NEWER = r"""
local prefix = ARGV[1]
local at = 2
local refused = 0
for k = 1, #KEYS, 2 do
  local field = prefix .. ARGV[at]
  local stored = tonumber(redis.call('HGET', KEYS[k + 1], field))
  if stored == nil or tonumber(ARGV[at + 1]) > stored then
    redis.call('SET', KEYS[k], ARGV[at + 2])
    redis.call('HSET', KEYS[k + 1], field, ARGV[at + 1])
  else
    refused = refused + 1
  end
  at = at + 3
end
return refused
"""


class FencedLists:
    """Replaces users' lists, each only from a newer log position than the list it replaces.

    The script is registered once and called by its digest (``EVALSHA``; reloaded by redis-py
    if the server lost it). One call per batch, atomic, like the ``MSET`` it replaces.
    """

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._keys = keys
        self._script = redis.register_script(_REPLACE_IF_NEWER)

    async def replace(self, model_name: str, lists: Mapping[str, FencedWrite]) -> int:
        """Write every list that is newer than the stored one; return how many were stale."""
        if not lists:
            return 0
        keys: list[str] = []
        args: list[bytes | int | str] = [f"rec:{model_name}:"]
        for user_id, write in lists.items():
            keys += (self._keys.recommendations(model_name, user_id), self._keys.fence(user_id))
            args += (write.position.partition, write.position.offset, write.value)
        return int(await self._script(keys=keys, args=args))


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
