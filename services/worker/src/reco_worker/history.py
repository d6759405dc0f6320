"""A user's recent actions in Redis: the timestamp rule, and the update + read in one round trip.

``hist:{user}`` is a sorted set scored by the effective event time (epoch seconds); a member
encodes one event (``reco_common.contracts.encode_history_member``, the same bytes for the same
event). Consequences:

- a redelivered event adds the same member with the same score: nothing changes;
- trimming keeps the newest ``history_len`` members by (time, member), which does not depend on
  the order in which events arrived: after any redelivery the set equals one clean pass.

A batch's histories are appended (fenced by log position, like the lists: see
``reco_common.redis_store``), trimmed, given their TTL and read back by one Lua script call (one
round trip, one reply string per user): redis-py spends ~100 µs of CPU per command and per reply
element, which a pipeline of four commands per user turned into the worker's
bottleneck. Like the API's ``MGET``, this assumes one Redis server, not a sharded cluster.

Timestamp rule: an event dated more than ``max_future_skew_s`` after its Kafka record's
timestamp is clamped to that record timestamp (stable across redeliveries, unlike "now"); an
old event keeps its time, is recorded, and weighs little under the decay.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import Counter
from redis.asyncio import Redis

from reco_common.contracts import HistoryEntry, RedisKeys, UserAction, decode_history_member
from reco_common.redis_store import LUA_HELPERS, Position, by_partition, framed

logger = logging.getLogger(__name__)


def effective_ts(action: UserAction, *, record_ts_ms: int, max_future_skew_s: float) -> float:
    """The event time used for history and decay (see the module's timestamp rule)."""
    ts = action.ts.timestamp()
    if record_ts_ms <= 0:  # no broker timestamp: nothing trustworthy to compare with
        return ts
    return min(ts, record_ts_ms / 1000 + max_future_skew_s)


# KEYS: one fence hash per partition group, then the groups' histories in order. The framed
# arguments: max length, TTL, whether this is a rebuild (1/0), the number of groups; then per
# group a user count and per user: user id, offset, a member count and (score, member) pairs.
# A user's members are added (one ZADD) only when the offset is greater than the one in the
# partition's fence (the fence, which also makes a redelivered batch a no-op); every history is
# trimmed and read back. A rebuild adds every member (adds are idempotent, and a fence written
# between a data loss and its detection must not hide older events), keeps the greater offset,
# and leaves trimming, the TTL and the read to its final read pass. Returns per user, in KEYS
# order, "member<TAB>score" lines joined by newlines (members never hold a newline; empty for a
# rebuild).
_APPEND_AND_READ = (
    LUA_HELPERS
    + r"""
local A = unframed(ARGV[1], ARGV[2])
local max_len = tonumber(A[1])
local ttl = A[2]
local rebuilding = A[3] == '1'
local groups = tonumber(A[4])
local at, k = 5, groups + 1
local out = {}
for g = 1, groups do
  local count = tonumber(A[at])
  at = at + 1
  local users, starts = {}, {}
  for i = 1, count do
    users[i], starts[i] = A[at], at
    at = at + 3 + 2 * tonumber(A[at + 2])
  end
  local stored = hmget(KEYS[g], users)
  local marks = {}
  for i = 1, count do
    local key, from = KEYS[k], starts[i]
    local n = tonumber(A[from + 2])
    local is_newer = newer(A[from + 1], stored[i])
    if n > 0 and (is_newer or rebuilding) then
      local scored = {}
      for j = from + 3, from + 2 + 2 * n do scored[#scored + 1] = A[j] end
      call_sliced('ZADD', key, scored)
    end
    if n > 0 and is_newer then
      marks[#marks + 1] = users[i]
      marks[#marks + 1] = A[from + 1]
    end
    local lines = {}
    if not rebuilding then
      redis.call('ZREMRANGEBYRANK', key, 0, -(max_len + 1))
      redis.call('EXPIRE', key, ttl)
      local flat = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
      for j = 1, #flat, 2 do
        lines[#lines + 1] = flat[j] .. '\t' .. flat[j + 1]
      end
    end
    out[#out + 1] = table.concat(lines, '\n')
    k = k + 1
  end
  call_sliced('HSET', KEYS[g], marks)
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
    """Appends to and reads back many users' histories in one round trip, fenced by position."""

    def __init__(
        self, redis: Redis, keys: RedisKeys, *, max_len: int, ttl_s: int, bad_members: Counter
    ) -> None:
        self._keys = keys
        self._max_len = max_len
        self._ttl_s = ttl_s
        self._bad_members = bad_members
        self._script = redis.register_script(_APPEND_AND_READ)

    async def append_and_read(
        self, additions: Mapping[str, Addition], *, rebuilding: bool = False
    ) -> dict[str, list[HistoryEntry]]:
        """Add each user's members unless already applied, trim, refresh TTLs, read back.

        ``rebuilding``: add even behind the fence; no trim, TTL or read (empty histories): a
        rebuild appends the whole log first, then trims and reads each history once.
        """
        groups = by_partition({user_id: a.position for user_id, a in additions.items()})
        keys = [self._keys.history_fence(partition) for partition in groups]
        args: list[bytes | int | str] = [self._max_len, self._ttl_s, int(rebuilding), len(groups)]
        order: list[str] = []
        for users in groups.values():
            args.append(len(users))
            for user_id in users:
                addition = additions[user_id]
                keys.append(self._keys.history(user_id))
                args += (user_id, addition.position.offset, len(addition.members))
                for member, ts in addition.members.items():
                    args += (repr(ts), member)
            order += users
        replies = await self._script(keys=keys, args=framed(args))
        return {
            user_id: self._decode(user_id, reply)
            for user_id, reply in zip(order, replies, strict=True)
        }

    def _decode(self, user_id: str, reply: bytes) -> list[HistoryEntry]:
        entries = []
        for line in reply.split(b"\n") if reply else ():
            member, _, ts = line.rpartition(b"\t")
            try:
                entries.append(decode_history_member(member, float(ts)))
            except ValueError as exc:
                self._bad_members.inc()
                logger.warning("history of %s: skipping a foreign member: %s", user_id, exc)
        return entries
