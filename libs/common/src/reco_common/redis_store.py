"""Redis on ``redis.asyncio``: the served lists, written by the worker, and the active-model
record, written by the controller, both read by the API through the contract's codec.

A user's list is one JSON value under one key, so replacing it is a single atomic ``SET``: a
reader sees the old list or the new one, never a partial or empty one. The API's read is one
round trip (``MGET`` of the user's list and the model's active record with its fallback), whose
two values are decoded separately: a corrupt list falls back, a corrupt model record does not.

The worker's writes are *fenced*: each carries the log position (``user-actions`` partition and
offset) of the event that caused it, and a server-side script applies it only when that position
is newer than the one recorded for the user in the partition's ``fence`` hash, in the same atomic
step. A worker
that lost its partitions while it held a batch (paused, stalled, slower than the rebalance) can
then never overwrite the newer list of the partition's new owner, whatever its timing. The topic
is keyed by user, so one user's events are ordered within one partition and positions are
compared per partition. The scripts take already-encoded values: they do not depend on a codec.

The controller's writes (a model's ``active`` record and the ``local`` target's rollout state)
are fenced the same way by an *epoch*: the generation of the worker Deployment (its lineage the
Deployment's uid) or the ``local`` state's own counter. A write from an older epoch of the same
lineage is refused, so a slow or paused writer that read the target before a newer rollout can
never switch the fallback back to what that rollout replaced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from reco_common.contracts import (
    ActiveModel,
    LocalRollout,
    RecommendationList,
    RedisKeys,
    S,
    decode,
    decode_recommendations,
    encode,
    encode_recommendations,
)
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
            {
                keys.recommendations(model_name, user): encode_recommendations(value)
                for user, value in lists.items()
            }
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


# Lua helpers of the fenced scripts: the arguments arrive framed (:func:`framed`); commands over
# many arguments go in slices (Lua's stack takes a few thousand values; a key of false for commands
# without one); HMGET of many fields; the fence's comparison (a missing offset is older than any).
LUA_HELPERS = r"""
local function unframed(lengths, data)
  local out, at = {}, 1
  for len in string.gmatch(lengths, '%d+') do
    local n = tonumber(len)
    out[#out + 1] = string.sub(data, at, at + n - 1)
    at = at + n
  end
  return out
end
local function call_sliced(command, key, args)
  for i = 1, #args, 1000 do
    local j = math.min(i + 999, #args)
    if key then
      redis.call(command, key, unpack(args, i, j))
    else
      redis.call(command, unpack(args, i, j))
    end
  end
end
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end
local function newer(offset, stored, or_equal)
  if not stored then return true end
  if or_equal then return tonumber(offset) >= tonumber(stored) end
  return tonumber(offset) > tonumber(stored)
end
"""

# KEYS: one fence hash per partition group, then the groups' list keys in order. The framed
# arguments: whether an equal offset wins too (1/0), the number of groups; then per group a user count and per user: user id, offset,
# encoded list.
# Per group: one HMGET of the stored offsets, one MSET of the newer lists, one HSET of their
# offsets. Returns how many lists were refused as stale.
_REPLACE_IF_NEWER = (
    LUA_HELPERS
    + r"""
local A = unframed(ARGV[1], ARGV[2])
local or_equal = A[1] == '1'
local groups = tonumber(A[2])
local at, k = 3, groups + 1
local refused = 0
for g = 1, groups do
  local count = tonumber(A[at])
  at = at + 1
  local users = {}
  for i = 0, count - 1 do users[i + 1] = A[at + 3 * i] end
  local stored = hmget(KEYS[g], users)
  local sets, marks = {}, {}
  for i = 0, count - 1 do
    local offset = A[at + 3 * i + 1]
    if newer(offset, stored[i + 1], or_equal) then
      sets[#sets + 1] = KEYS[k + i]
      sets[#sets + 1] = A[at + 3 * i + 2]
      marks[#marks + 1] = users[i + 1]
      marks[#marks + 1] = offset
    else
      refused = refused + 1
    end
  end
  call_sliced('MSET', false, sets)
  call_sliced('HSET', KEYS[g], marks)
  at = at + 3 * count
  k = k + count
end
return refused
"""
)


def framed(values: Sequence[bytes | str | int]) -> list[bytes | str]:
    """Many script arguments as two, their lengths and their concatenation (see ``unframed``).

    redis-py packs each argument of a command in Python (~5-10 µs each): a batch's thousands of
    arguments cost more than the script itself, two cost nothing. Binary-safe.
    """
    parts = [v if isinstance(v, bytes) else str(v).encode() for v in values]
    return [",".join([str(len(p)) for p in parts]), b"".join(parts)]


def by_partition(positions: Mapping[str, Position]) -> dict[int, list[str]]:
    """The users of a batch grouped by the partition of their position (one fence hash each)."""
    groups: dict[int, list[str]] = {}
    for user_id, position in positions.items():
        groups.setdefault(position.partition, []).append(user_id)
    return groups


class FencedLists:
    """Replaces users' lists, each only from a newer log position than the list it replaces.

    The fence is a hash per partition and model (user → offset). The script is registered once
    and called by its digest (``EVALSHA``; reloaded by redis-py if the server lost it): one
    atomic call per batch, like the ``MSET`` it replaces, whose few commands cover every user.
    """

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._keys = keys
        self._script = redis.register_script(_REPLACE_IF_NEWER)

    async def replace(
        self, model_name: str, lists: Mapping[str, FencedWrite], *, or_equal: bool = False
    ) -> int:
        """Write every list that is newer than the stored one; return how many were stale.

        ``or_equal``: a list from the same position wins too — a rebuild's, computed from the
        complete history, replaces one written from the same event over a partial history.
        """
        if not lists:
            return 0
        groups = by_partition({user_id: write.position for user_id, write in lists.items()})
        keys = [self._keys.lists_fence(partition, model_name) for partition in groups]
        args: list[bytes | int | str] = [int(or_equal), len(groups)]
        for users in groups.values():
            args.append(len(users))
            for user_id in users:
                write = lists[user_id]
                keys.append(self._keys.recommendations(model_name, user_id))
                args += (user_id, write.position.offset, write.value)
        return int(await self._script(keys=keys, args=framed(args)))


async def activate_model(redis: Redis, keys: RedisKeys, active: ActiveModel) -> None:
    """Record ``active`` as the model's served version, unfenced: for seeding (tests,
    benchmarks); the controller writes through :class:`ModelRecords`."""
    payload = encode(active)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.popular(active.model_name, active.version), payload)
        pipe.set(keys.active_model(active.model_name), payload)
        await pipe.execute()


@dataclass(frozen=True, slots=True)
class Epoch:
    """The position of a controller's write: ``number`` grows within one ``lineage``."""

    lineage: str
    number: int


# KEYS[1]: the fence hash (lineage, epoch); KEYS[2..]: keys to SET to ARGV[3..]. Applied, with
# the fence raised, unless the fence holds a newer epoch of the same lineage (an equal one wins:
# the same decision written again, e.g. after Redis lost it). Returns 1 if applied, else 0.
_SET_IF_NOT_OLDER = r"""
local stored = redis.call('HMGET', KEYS[1], 'lineage', 'epoch')
if stored[1] == ARGV[1] and stored[2] and tonumber(ARGV[2]) < tonumber(stored[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'lineage', ARGV[1], 'epoch', ARGV[2])
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1]) end
return 1
"""


class ModelRecords:
    """The controller's records of each model: the ``active`` record (with the version's
    ``popular`` copy) and the ``local`` target's rollout state, each write fenced by epoch."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(_SET_IF_NOT_OLDER)

    async def activate(self, active: ActiveModel, *, epoch: Epoch) -> bool:
        """Make ``active`` the model's served version; ``False`` if a newer epoch was written."""
        payload = encode(active)
        keys = self._keys
        return await self._set_if_not_older(
            active.model_name,
            epoch,
            {
                keys.popular(active.model_name, active.version): payload,
                keys.active_model(active.model_name): payload,
            },
        )

    async def remember_rollout(self, model_name: str, state: LocalRollout, *, lineage: str) -> bool:
        """Store the ``local`` target's state (its ``epoch`` the fence); ``False`` if stale."""
        epoch = Epoch(lineage, state.epoch)
        return await self._set_if_not_older(
            model_name, epoch, {self._keys.rollout(model_name): encode(state)}
        )

    async def rollout(self, model_name: str) -> LocalRollout | None:
        return _decoded(LocalRollout, await self._redis.get(self._keys.rollout(model_name)))

    async def active(self, model_name: str) -> ActiveModel | None:
        return await read_active(self._redis, self._keys, model_name)

    async def _set_if_not_older(
        self, model_name: str, epoch: Epoch, values: Mapping[str, bytes]
    ) -> bool:
        fence = self._keys.active_fence(model_name)
        args: list[bytes | str | int] = [epoch.lineage, epoch.number, *values.values()]
        applied = await self._script(keys=[fence, *values], args=args)
        return bool(int(applied))


@dataclass(frozen=True, slots=True)
class ServedView:
    """What the API needs for one request, read in one round trip; each value is decoded on
    its own, raising :class:`reco_common.contracts.ContractError` when it is corrupt."""

    recommendations: bytes | str | None
    active: bytes | str | None

    def recommendation_list(self) -> RecommendationList | None:
        """The user's list, of either stored format, decoded whole (not the API's path)."""
        return (
            None if self.recommendations is None else decode_recommendations(self.recommendations)
        )

    def active_model(self) -> ActiveModel | None:
        return _decoded(ActiveModel, self.active)


def _decoded(model: type[S], raw: bytes | str | None) -> S | None:
    return None if raw is None else decode(model, raw)


def served_keys(keys: RedisKeys, model_name: str, user_id: str) -> tuple[str, str]:
    """The two keys of the API's read, in :class:`ServedView`'s order."""
    return keys.recommendations(model_name, user_id), keys.active_model(model_name)


async def read_served(redis: Redis, keys: RedisKeys, model_name: str, user_id: str) -> ServedView:
    rec, active = await redis.mget(*served_keys(keys, model_name, user_id))
    return ServedView(rec, active)


async def read_active(redis: Redis, keys: RedisKeys, model_name: str) -> ActiveModel | None:
    return _decoded(ActiveModel, await redis.get(keys.active_model(model_name)))


async def read_list(
    redis: Redis, keys: RedisKeys, model_name: str, user_id: str
) -> RecommendationList | None:
    raw = await redis.get(keys.recommendations(model_name, user_id))
    return None if raw is None else decode_recommendations(raw)
