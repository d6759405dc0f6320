"""A user's recent actions in Redis: member encoding, the timestamp rule, pipelined update + read.

``hist:{user}`` is a sorted set scored by the effective event time (epoch seconds). A member
encodes one event as ``1<TAB>event_id<TAB>item_id<TAB>action<TAB>weight`` (identifiers never
contain white space, so the tab is unambiguous; ``weight`` is empty when the event has none and
the configured action weight applies at scoring time). Consequences:

- a redelivered event adds the same member with the same score: nothing changes;
- trimming keeps the newest ``history_len`` members by (time, member), which does not depend on
  the order in which events arrived: after any redelivery the set equals one clean pass.

Timestamp rule: an event dated more than ``max_future_skew_s`` after its Kafka record's
timestamp is clamped to that record timestamp (stable across redeliveries, unlike "now"); an
old event keeps its time, is recorded, and weighs little under the decay.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from prometheus_client import Counter
from redis.asyncio import Redis

from reco_common.contracts import ActionType, RedisKeys, UserAction
from reco_worker.scoring import HistoryEntry

logger = logging.getLogger(__name__)

MEMBER_FORMAT: Final = "1"
_SEP: Final = "\t"


def encode_member(action: UserAction) -> bytes:
    """The sorted-set member of ``action``: the same event always gives the same bytes."""
    weight = "" if action.weight is None else repr(float(action.weight))
    return _SEP.join(
        (MEMBER_FORMAT, action.event_id, action.item_id, action.action.value, weight)
    ).encode()


def decode_member(member: bytes, ts: float) -> HistoryEntry:
    """Parse a member written by :func:`encode_member`; raise ``ValueError`` for anything else."""
    fields = member.decode().split(_SEP)
    if len(fields) != 5 or fields[0] != MEMBER_FORMAT:
        raise ValueError(f"not a history member of format {MEMBER_FORMAT}: {member[:80]!r}")
    _, event_id, item_id, action, weight = fields
    return HistoryEntry(
        event_id=event_id,
        item_id=item_id,
        action=ActionType(action),
        weight=float(weight) if weight else None,
        ts=ts,
    )


def effective_ts(action: UserAction, *, record_ts_ms: int, max_future_skew_s: float) -> float:
    """The event time used for history and decay (see the module's timestamp rule)."""
    ts = action.ts.timestamp()
    if record_ts_ms <= 0:  # no broker timestamp: nothing trustworthy to compare with
        return ts
    return min(ts, record_ts_ms / 1000 + max_future_skew_s)


class HistoryStore:
    """Appends to and reads back many users' histories in one pipelined round trip."""

    def __init__(
        self, redis: Redis, keys: RedisKeys, *, max_len: int, ttl_s: int, bad_members: Counter
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._max_len = max_len
        self._ttl_s = ttl_s
        self._bad_members = bad_members

    async def append_and_read(
        self, additions: Mapping[str, Mapping[bytes, float]]
    ) -> dict[str, list[HistoryEntry]]:
        """Add each user's ``member → time``, trim, refresh the TTL, and return the histories."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id, members in additions.items():
                key = self._keys.history(user_id)
                pipe.zadd(key, dict(members))
                pipe.zremrangebyrank(key, 0, -(self._max_len + 1))
                pipe.expire(key, self._ttl_s)
                pipe.zrange(key, 0, -1, withscores=True)
            replies = await pipe.execute()
        return {
            user_id: self._decode(user_id, replies[4 * i + 3])
            for i, user_id in enumerate(additions)
        }

    def _decode(self, user_id: str, pairs: list[tuple[bytes, float]]) -> list[HistoryEntry]:
        entries = []
        for member, ts in pairs:
            try:
                entries.append(decode_member(member, ts))
            except ValueError as exc:
                self._bad_members.inc()
                logger.warning("history of %s: skipping a foreign member: %s", user_id, exc)
        return entries
