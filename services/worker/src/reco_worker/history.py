"""A user's recent actions in Redis: the timestamp rule, and the update + read in one round trip.

``hist:{user}`` is a sorted set scored by the effective event time (epoch seconds); a member
encodes one event (``reco_common.contracts.encode_history_member``, the same bytes for the same
event). Consequences:

- a redelivered event adds the same member with the same score: nothing changes;
- trimming keeps the newest ``history_len`` members by (time, member), which does not depend on
  the order in which events arrived: after any redelivery the set equals one clean pass.

A batch's histories are appended (fenced by log position, like the lists: see
``reco_common.redis_store``), trimmed, given their TTL and read back by one Lua script call (one
round trip, one reply string per user, decoded with one split): redis-py spends ~100 µs of CPU
per command and per reply element, which a pipeline of four commands per user turned into the
worker's bottleneck. A rebuild writes whole histories folded from the log by another script
of the same shape (``HistoryStore.rebuild``). A user's keys share a slot (their hash tag), so on a
Redis Cluster the calls go one per slot, pipelined per node (``reco_common.redis_store.call_per_slot``).

Timestamp rule: an event dated more than ``max_future_skew_s`` after its Kafka record's
timestamp is clamped to that record timestamp (stable across redeliveries, unlike "now"); an
old event keeps its time, is recorded, and weighs little under the decay.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from redis.commands.core import AsyncScript

from reco_common.contracts import (
    HistoryColumns,
    RedisKeys,
    UserAction,
    decode_history,
    decode_history_member,
)
from reco_common.redis_store import LUA_HELPERS, Position, RedisClient, UserCall, call_per_slot

logger = logging.getLogger(__name__)


def effective_ts(action: UserAction, *, record_ts_ms: int, max_future_skew_s: float) -> float:
    """The event time used for history and decay (see the module's timestamp rule)."""
    ts = action.ts.timestamp()
    if record_ts_ms <= 0:  # no broker timestamp: nothing trustworthy to compare with
        return ts
    return min(ts, record_ts_ms / 1000 + max_future_skew_s)


# The history scripts' own helpers: a user's (score, member) pairs from the two joined
# arguments, the walk over the users of a call (both scripts take the same KEYS and arguments),
# and a history read back as "member<TAB>score" lines.
_HISTORY_HELPERS = (
    LUA_HELPERS
    + r"""
local function scored_of(members, scores)
  local scored, j = {}, 2
  for score in string.gmatch(scores, '[^\n]+') do
    scored[j - 1] = score
    j = j + 2
  end
  j = 2
  for member in string.gmatch(members, '[^\n]+') do
    scored[j] = member
    j = j + 2
  end
  return scored
end
local function each_user(A)
  local i, at, users = -1, 4, tonumber(A[3])
  return function()
    i = i + 1
    if i >= users then
      return nil
    end
    local here = at
    at = at + 4
    local scored = scored_of(A[here + 2], A[here + 3])
    return i, KEYS[2 * i + 1], KEYS[2 * i + 2], A[here], A[here + 1], scored
  end
end
local function lines_of(key)
  local flat, lines = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES'), {}
  for j = 1, #flat, 2 do
    lines[#lines + 1] = flat[j] .. '\t' .. flat[j + 1]
  end
  return table.concat(lines, '\n')
end
"""
)

# KEYS: per user, its fence hash and its history. The framed arguments: max length, TTL, the
# number of users; then per user: the fence field, the offset, the members joined by newlines and
# their scores joined by newlines (two arguments however many members: redis-py packs each
# argument in Python). A user's members are added (one ZADD) only when the offset is greater
# than the one in the fence (which also makes a redelivered batch a no-op); every history is
# trimmed, given its TTL and read back. Returns two strings: the reply's length per user
# (comma-separated, in order) and the users' replies concatenated, each "member<TAB>score" lines
# joined by newlines (members never hold a newline): one reply element per user cost ~5-10 µs
# of Python parsing in redis-py.
_APPEND_AND_READ = (
    _HISTORY_HELPERS
    + r"""
local A = unframed(ARGV[1], ARGV[2])
local max_len = tonumber(A[1])
local ttl = A[2]
local out, lengths = {}, {}
for _, fence, key, field, offset, scored in each_user(A) do
  if #scored > 0 and newer(offset, redis.call('HGET', fence, field)) then
    call_sliced('ZADD', key, scored)
    redis.call('HSET', fence, field, offset)
  end
  redis.call('ZREMRANGEBYRANK', key, 0, -(max_len + 1))
  redis.call('EXPIRE', key, ttl)
  out[#out + 1] = lines_of(key)
  lengths[#lengths + 1] = #out[#out]
end
return {table.concat(lengths, ','), table.concat(out)}
"""
)

# A rebuild's write of whole histories, folded from the log (same KEYS and arguments). Every
# member is added even behind the fence (adds are idempotent, and a fence written between a
# data loss and its detection must not hide older events); the fence keeps the greater offset.
# When the stored history holds nothing but what was sent (its size is the number sent, as the
# fold trimmed it already), the caller scores what it sent. Otherwise the history is trimmed and
# read back (a live worker added to it, or older members survived): the reply is a flat list of
# (the user's 1-based place in the call, "member<TAB>score" lines) of just those.
_REBUILD = (
    _HISTORY_HELPERS
    + r"""
local A = unframed(ARGV[1], ARGV[2])
local max_len = tonumber(A[1])
local ttl = A[2]
local out = {}
for i, fence, key, field, offset, scored in each_user(A) do
  call_sliced('ZADD', key, scored)
  if newer(offset, redis.call('HGET', fence, field)) then
    redis.call('HSET', fence, field, offset)
  end
  if redis.call('ZCARD', key) ~= #scored / 2 then
    redis.call('ZREMRANGEBYRANK', key, 0, -(max_len + 1))
    out[#out + 1] = i + 1
    out[#out + 1] = lines_of(key)
  end
  redis.call('EXPIRE', key, ttl)
end
return out
"""
)


@dataclass(frozen=True, slots=True)
class Addition:
    """One user's new history members (member → effective time) and their newest log position."""

    position: Position
    members: Mapping[bytes, float]


class HistoryStore:
    """Appends to and reads back many users' histories in one round trip (one per node on a
    cluster), fenced by position."""

    def __init__(
        self, redis: RedisClient, keys: RedisKeys, *, max_len: int, ttl_s: int, bad_members: Counter
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._max_len = max_len
        self._ttl_s = ttl_s
        self._bad_members = bad_members
        self._append = redis.register_script(_APPEND_AND_READ)
        self._rebuild = redis.register_script(_REBUILD)

    @property
    def max_len(self) -> int:
        return self._max_len

    async def append_and_read(self, additions: Mapping[str, Addition]) -> dict[str, HistoryColumns]:
        """Add each user's members unless already applied, trim, refresh TTLs, read back."""
        order, replies = await self._call(self._append, additions)
        read: dict[str, HistoryColumns] = {}
        for places, (lengths, joined) in replies:
            at = 0
            for place, length in zip(places, map(int, lengths.split(b",")), strict=True):
                read[order[place]] = self._decode(order[place], joined[at : at + length])
                at += length
        return {user_id: read[user_id] for user_id in order}

    async def rebuild(self, folded: Mapping[str, Addition]) -> dict[str, HistoryColumns]:
        """Write whole histories folded from the log (each already trimmed to ``max_len``,
        see ``_REBUILD``); return the histories that differ from what was sent, read back."""
        order, replies = await self._call(self._rebuild, folded)
        stored: dict[str, HistoryColumns] = {}
        for places, reply in replies:
            for at, lines in zip(reply[0::2], reply[1::2], strict=True):
                user_id = order[places[int(at) - 1]]
                stored[user_id] = self._decode(user_id, lines)
        return stored

    async def _call(
        self, script: AsyncScript, additions: Mapping[str, Addition]
    ) -> tuple[list[str], list[tuple[list[int], Any]]]:
        keys = self._keys
        order = list(additions)
        calls = []
        for user_id in order:
            addition = additions[user_id]
            members = addition.members
            calls.append(
                UserCall(
                    (keys.user_fence(user_id), keys.history(user_id)),
                    (
                        keys.history_fence_field(addition.position.partition),
                        addition.position.offset,
                        b"\n".join(members),
                        "\n".join(map(repr, members.values())),
                    ),
                )
            )
        header = (self._max_len, self._ttl_s)
        return order, await call_per_slot(self._redis, script, header, calls)

    def _decode(self, user_id: str, reply: bytes) -> HistoryColumns:
        try:
            return decode_history(reply)
        except ValueError:
            pass  # a foreign member among them: decode one by one, skipping it
        entries = []
        for line in reply.split(b"\n"):
            member, _, ts = line.rpartition(b"\t")
            try:
                entries.append(decode_history_member(member, float(ts)))
            except ValueError as exc:
                self._bad_members.inc()
                logger.warning("history of %s: skipping a foreign member: %s", user_id, exc)
        return HistoryColumns(
            [e.item_id for e in entries],
            [e.action for e in entries],
            [e.weight for e in entries],
            [e.ts for e in entries],
        )
