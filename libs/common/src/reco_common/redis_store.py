"""Redis on ``redis.asyncio``: the served lists, written by the worker, and the active-model
record, written by the controller, both read by the API through the contract's codec. One
server or a Redis Cluster (``RedisSettings.cluster``), with one key layout
(``reco_common.contracts.RedisKeys``: a user's keys share a slot, a model's records another).

A user's list is one value under one key, so replacing it is a single atomic ``SET``: a reader
sees the old list or the new one, never a partial or empty one. The API reads the user's list
(one key) per request and keeps the model's active record in process (``reco_api``).

The worker's writes are *fenced*: each carries the log position (``user-actions`` partition and
offset) of the event that caused it, and a server-side script applies it only when that position
is newer than the one recorded in the user's ``fence`` hash for that partition, in the same
atomic step. A worker that lost its partitions while it held a batch (paused, stalled, slower
than the rebalance) can then never overwrite the newer list of the partition's new owner,
whatever its timing. The topic is keyed by user, so one user's events are ordered within one
partition and positions are compared per partition. The scripts take already-encoded values:
they do not depend on a codec. A script call touches the keys of its users only, all declared;
on a cluster the users of a batch are grouped by slot, one call per slot, and the calls go
through the self-pipelining cluster client (``reco_common.pipelined_cluster``: one write per
node, ~6-10 µs of CPU per call where redis-py's cluster pipeline spent ~20-70; see
:func:`call_per_slot`).

The controller's writes (a model's ``active`` record and the ``local`` target's rollout state)
are fenced the same way by an *epoch*: the generation of the worker Deployment (its lineage the
Deployment's uid) or the ``local`` state's own counter. A write from an older epoch of the same
lineage is refused, so a slow or paused writer that read the target before a newer rollout can
never switch the fallback back to what that rollout replaced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript

from reco_common.contracts import (
    REDIS_LAYOUT,
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
from reco_common.pipelined import RedisReplyError, pack
from reco_common.pipelined_cluster import ClusterPipelinedRedis, slot_of
from reco_common.settings import RedisSettings


class ClusterClient(RedisCluster):
    """redis-py's cluster client, with the self-pipelining one its fenced scripts go through
    (``scripts``: the same nodes, credentials and timeout; closed with it)."""

    def __init__(self, *, scripts: ClusterPipelinedRedis, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scripts = scripts

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.scripts.aclose()


# A single server or a Redis Cluster (``RedisSettings.cluster``): the same commands and layout.
RedisClient = Redis | ClusterClient


def connect(settings: RedisSettings, *, timeout_s: float | None = None) -> RedisClient:
    """A pooled client (a cluster client when the URL names a cluster); no I/O happens until
    the first command."""
    timeout = timeout_s or settings.socket_timeout_s
    if not settings.cluster:
        return Redis.from_url(
            settings.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=settings.max_connections,
            health_check_interval=30,
        )
    urls = settings.node_urls()
    nodes = [urlsplit(url) for url in urls]
    first = nodes[0]
    return ClusterClient(
        scripts=ClusterPipelinedRedis(urls, timeout_s=timeout),
        startup_nodes=[ClusterNode(n.hostname or "127.0.0.1", n.port or 6379) for n in nodes],
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        ssl=first.scheme == "rediss",
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        max_connections=settings.max_connections,
    )


class LayoutMismatch(RuntimeError):
    """Redis holds data of another key layout than :data:`REDIS_LAYOUT`."""


async def check_layout(redis: RedisClient, keys: RedisKeys) -> None:
    """Record :data:`REDIS_LAYOUT` in a Redis that has none; refuse one holding another's data.

    Layout 1 wrote no ``layout`` key: its generation marker without one (read after the marker,
    as workers starting together race) is layout 1 data, which this code would not see (other key names), answering from empty histories. The way over is
    a flush of the prefix and a rebuild from the log (docs/architecture.md, "Redis key layout").
    """
    stored = await redis.get(keys.layout())
    if stored is None:
        if await redis.exists(keys.generation()):
            # Code of this layout records it before it writes the marker, so the marker seen
            # without one may be another worker's that started meanwhile: read again.
            stored = await redis.get(keys.layout()) or b"1"
        else:
            await mark_layout(redis, keys)
            stored = await redis.get(keys.layout())
    if stored is not None and int(stored) != REDIS_LAYOUT:
        raise LayoutMismatch(
            f"Redis holds key layout {int(stored)} under {keys.prefix!r}, this code writes layout "
            f"{REDIS_LAYOUT}: flush the prefix and rebuild from the log (reco-worker rebuild)"
        )


async def mark_layout(redis: RedisClient, keys: RedisKeys) -> None:
    """Record :data:`REDIS_LAYOUT` unless a layout is recorded."""
    await redis.set(keys.layout(), REDIS_LAYOUT, nx=True)


async def replace_lists(
    redis: RedisClient, keys: RedisKeys, model_name: str, lists: Mapping[str, RecommendationList]
) -> None:
    """Replace many users' lists with one ``MSET`` (atomic; one command however many lists; on
    a cluster, one per slot).

    Unfenced: for seeding lists (tests, benchmarks); the worker writes through ``FencedLists``.

    One command rather than a pipeline of ``SET``: redis-py spends ~50 µs of CPU per command,
    which showed up in the worker's batches of hundreds of users.
    """
    if not lists:
        return
    values = {
        keys.recommendations(model_name, user): encode_recommendations(value)
        for user, value in lists.items()
    }
    if isinstance(redis, ClusterClient):
        await redis.mset_nonatomic(values)  # one MSET per slot, pipelined per node
    else:
        await redis.mset(values)


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
# many arguments go in slices (Lua's stack takes a few thousand values); the fence's comparison
# (a missing offset is older than any).
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
    redis.call(command, key, unpack(args, i, math.min(i + 999, #args)))
  end
end
local function newer(offset, stored, or_equal)
  if not stored then return true end
  if or_equal then return tonumber(offset) >= tonumber(stored) end
  return tonumber(offset) > tonumber(stored)
end
"""

# KEYS: per user, its fence hash and its list key (``UserCall.keys``). The framed arguments:
# whether an equal offset wins too (1/0), the number of users; then per user: the fence field,
# the offset, the encoded list. Returns how many lists were refused as stale.
_REPLACE_IF_NEWER = (
    LUA_HELPERS
    + r"""
local A = unframed(ARGV[1], ARGV[2])
local or_equal = A[1] == '1'
local refused = 0
for i = 0, tonumber(A[2]) - 1 do
  local fence, field, offset = KEYS[2 * i + 1], A[3 + 3 * i], A[4 + 3 * i]
  if newer(offset, redis.call('HGET', fence, field), or_equal) then
    redis.call('SET', KEYS[2 * i + 2], A[5 + 3 * i])
    redis.call('HSET', fence, field, offset)
  else
    refused = refused + 1
  end
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


@dataclass(frozen=True, slots=True)
class UserCall:
    """One user's share of a fenced script call: its keys (the fence hash first, all of them
    in the user's slot) and its arguments."""

    keys: tuple[str, ...]
    args: tuple[bytes | str | int, ...]


async def call_per_slot(
    redis: RedisClient,
    script: AsyncScript,
    header: Sequence[bytes | str | int],
    calls: Sequence[UserCall],
) -> list[tuple[list[int], Any]]:
    """Run ``script`` over every user of ``calls``: its arguments ``header``, the user count,
    then each user's (framed, with their keys in order).

    On a single Redis, one call for them all (one round trip). On a cluster a script may only
    touch one slot: one call per slot, every key declared, all sent at once through the
    cluster's pipelined client (:func:`_on_cluster`). Returns each call's users (their places
    in ``calls``) and its reply.
    """
    if not calls:
        return []
    if not isinstance(redis, ClusterClient):
        return [(list(range(len(calls))), await _script_call(script, header, calls))]
    groups: dict[int, list[int]] = {}
    for place, call in enumerate(calls):
        groups.setdefault(slot_of(call.keys[0]), []).append(place)
    batches = {slot: [calls[p] for p in places] for slot, places in groups.items()}
    replies = await _on_cluster(redis.scripts, script, header, batches)
    return list(zip(groups.values(), replies, strict=True))


def _script_arguments(
    header: Sequence[bytes | str | int], calls: Sequence[UserCall]
) -> tuple[list[str], list[bytes | str]]:
    keys = [key for call in calls for key in call.keys]
    args = [*header, len(calls)]
    for call in calls:
        args += call.args
    return keys, framed(args)


async def _script_call(
    script: AsyncScript, header: Sequence[bytes | str | int], calls: Sequence[UserCall]
) -> Any:
    keys, args = _script_arguments(header, calls)
    return await script(keys=keys, args=args)


async def _on_cluster(
    redis: ClusterPipelinedRedis,
    script: AsyncScript,
    header: Sequence[bytes | str | int],
    batches: Mapping[int, list[UserCall]],
) -> list[Any]:
    """One ``EVALSHA`` per batch (one slot's users, every key declared), all sent at once, each
    to the primary of its slot (the client follows ``MOVED`` and ``ASK``, reading the slot map
    again); the batches whose node lacks the script (a new cluster, a promoted replica, a
    restart) go again as ``EVAL``, which loads it there. Raises the first error once every
    call is answered."""
    calls = []
    for slot, batch in batches.items():
        keys, args = _script_arguments(header, batch)
        calls.append(((str(len(keys)), *keys, *args), slot))
    replies = await redis.execute_many(
        [(pack("EVALSHA", script.sha, *arguments), slot) for arguments, slot in calls]
    )
    missing = [place for place, reply in enumerate(replies) if _no_script(reply)]
    if missing:
        source = script.script if isinstance(script.script, str) else bytes(script.script)
        again = await redis.execute_many(
            [(pack("EVAL", source, *calls[p][0]), calls[p][1]) for p in missing]
        )
        for place, reply in zip(missing, again, strict=True):
            replies[place] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _no_script(reply: Any) -> bool:
    return isinstance(reply, RedisReplyError) and str(reply).startswith("NOSCRIPT")


class FencedLists:
    """Replaces users' lists, each only from a newer log position than the list it replaces.

    The fence is the user's hash (a field per model and partition: the offset). The script is
    registered once and called by its digest (``EVALSHA``; loaded again if the server
    lost it): one atomic call per batch (per slot on a cluster, :func:`call_per_slot`).
    """

    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(_REPLACE_IF_NEWER)

    async def replace(
        self, model_name: str, lists: Mapping[str, FencedWrite], *, or_equal: bool = False
    ) -> int:
        """Write every list that is newer than the stored one; return how many were stale.

        ``or_equal``: a list from the same position wins too — a rebuild's, computed from the
        complete history, replaces one written from the same event over a partial history.
        """
        keys = self._keys
        calls = [
            UserCall(
                (keys.user_fence(user_id), keys.recommendations(model_name, user_id)),
                (
                    keys.lists_fence_field(write.position.partition, model_name),
                    write.position.offset,
                    write.value,
                ),
            )
            for user_id, write in lists.items()
        ]
        replies = await call_per_slot(self._redis, self._script, [int(or_equal)], calls)
        return sum(int(reply) for _, reply in replies)


async def activate_model(redis: RedisClient, keys: RedisKeys, active: ActiveModel) -> None:
    """Record ``active`` as the model's served version, unfenced: for seeding (tests,
    benchmarks); the controller writes through :class:`ModelRecords`. One ``MSET``: both keys
    are in the model's slot."""
    payload = encode(active)
    name = active.model_name
    await redis.mset(
        {keys.popular(name, active.version): payload, keys.active_model(name): payload}
    )


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

    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
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


def _decoded(model: type[S], raw: bytes | str | None) -> S | None:
    return None if raw is None else decode(model, raw)


async def read_active(redis: RedisClient, keys: RedisKeys, model_name: str) -> ActiveModel | None:
    return _decoded(ActiveModel, await redis.get(keys.active_model(model_name)))


async def read_list(
    redis: RedisClient, keys: RedisKeys, model_name: str, user_id: str
) -> RecommendationList | None:
    raw = await redis.get(keys.recommendations(model_name, user_id))
    return None if raw is None else decode_recommendations(raw)
