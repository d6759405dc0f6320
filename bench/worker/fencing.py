"""The cost of fenced writes: the worker's batch handler with and without the fence, one run.

The same batches of user actions go through the production ``ActionHandler`` (real scoring,
real Redis) twice per round, in alternation: once with the fenced writers (the history script
that checks and records the log position, ``FencedLists``) and once with the unfenced baseline
they replaced (the history script without the position, and one ``MSET`` for the lists). Each
pass starts from empty keys under its own prefix, which is deleted afterwards. Reported per
variant (median over rounds): events/s through the handler, its per-batch latency p50/p99 (the
part of freshness the handler adds) and the time spent in the two Redis calls.

The handler is the whole per-batch work except the Kafka fetch and commit, which the fence does
not change: the throughput loss measured here is an upper bound of the worker's. Run (needs
``scripts/stack.sh up``):

    uv run python bench/worker/fencing.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from aiokafka import ConsumerRecord
from redis.asyncio import Redis
from threadpoolctl import threadpool_limits

from reco_common.artifact import ModelArrays
from reco_common.contracts import ActionType, HistoryColumns, RedisKeys, UserAction
from reco_common.kafka import Delivery
from reco_common.redis_store import FencedLists, FencedWrite, RedisClient, connect
from reco_common.settings import RedisSettings
from reco_worker.consumer import ActionHandler
from reco_worker.history import Addition, HistoryStore
from reco_worker.metrics import WorkerMetrics
from reco_worker.scoring import ServingModel
from reco_worker.settings import WorkerSettings

DIM = 64
ACTIONS = list(ActionType)

# The history script before fencing (the baseline): the same work without the position check.
_UNFENCED_APPEND_AND_READ = r"""
local max_len = tonumber(ARGV[1])
local ttl = ARGV[2]
local at = 3
local out = {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local count = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, count do
    redis.call('ZADD', key, ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  redis.call('ZREMRANGEBYRANK', key, 0, -(max_len + 1))
  redis.call('EXPIRE', key, ttl)
  local flat = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local lines = {}
  for i = 1, #flat, 2 do
    lines[#lines + 1] = flat[i] .. '\t' .. flat[i + 1]
  end
  out[k] = table.concat(lines, '\n')
end
return out
"""


@dataclass
class Timer:
    """Seconds spent in the Redis calls of one pass."""

    seconds: float = 0.0


class UnfencedHistory(HistoryStore):
    """The baseline history store: no position, no fence hash."""

    def __init__(self, redis: Redis, keys: RedisKeys, timer: Timer, **kwargs: object) -> None:
        super().__init__(redis, keys, **kwargs)  # type: ignore[arg-type]
        self._unfenced = redis.register_script(_UNFENCED_APPEND_AND_READ)
        self._timer = timer

    async def append_and_read(self, additions: Mapping[str, Addition]) -> dict[str, HistoryColumns]:
        args: list[bytes | int | str] = [self._max_len, self._ttl_s]
        for addition in additions.values():
            args.append(len(addition.members))
            for member, ts in addition.members.items():
                args += (repr(ts), member)
        started = time.perf_counter()
        replies = await self._unfenced(keys=[self._keys.history(u) for u in additions], args=args)
        try:
            return {u: self._decode(u, r) for u, r in zip(additions, replies, strict=True)}
        finally:
            self._timer.seconds += time.perf_counter() - started


class TimedHistory(HistoryStore):
    def __init__(self, redis: Redis, keys: RedisKeys, timer: Timer, **kwargs: object) -> None:
        super().__init__(redis, keys, **kwargs)  # type: ignore[arg-type]
        self._timer = timer

    async def append_and_read(self, additions: Mapping[str, Addition]) -> dict[str, HistoryColumns]:
        started = time.perf_counter()
        try:
            return await super().append_and_read(additions)
        finally:
            self._timer.seconds += time.perf_counter() - started


class UnfencedLists:
    """The baseline list writer: one ``MSET``, no position."""

    def __init__(self, redis: Redis, keys: RedisKeys, timer: Timer) -> None:
        self._redis, self._keys, self._timer = redis, keys, timer

    async def replace(self, model_name: str, lists: Mapping[str, FencedWrite]) -> int:
        started = time.perf_counter()
        await self._redis.mset(
            {self._keys.recommendations(model_name, u): w.value for u, w in lists.items()}
        )
        self._timer.seconds += time.perf_counter() - started
        return 0


class TimedLists(FencedLists):
    def __init__(self, redis: Redis, keys: RedisKeys, timer: Timer) -> None:
        super().__init__(redis, keys)
        self._timer = timer

    async def replace(self, model_name: str, lists: Mapping[str, FencedWrite]) -> int:
        started = time.perf_counter()
        try:
            return await super().replace(model_name, lists)
        finally:
            self._timer.seconds += time.perf_counter() - started


@dataclass
class Pass:
    events_per_s: float
    batch_p50_ms: float
    batch_p99_ms: float
    redis_ms_per_batch: float
    cpu_ms_per_batch: float  # this process, all threads (Redis' own CPU not included)


@dataclass
class Variant:
    name: str
    passes: list[Pass] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(p, attr) for p in self.passes)


def model(n_items: int, n_users: int) -> ServingModel:
    rng = np.random.default_rng(0)
    arrays = ModelArrays(
        item_ids=[f"i{n}" for n in range(n_items)],
        user_ids=[f"u{n}" for n in range(n_users)],
        item_factors=0.1 * rng.standard_normal((n_items, DIM + 1), dtype=np.float32),
        user_factors=0.1 * rng.standard_normal((n_users, DIM + 1), dtype=np.float32),
        popular_items=[f"i{n}" for n in range(200)],
        popular_scores=[float(200 - n) for n in range(200)],
    )
    return ServingModel(name="bench", version="v1", uri="mem://bench", arrays=arrays)


def batches(
    n_batches: int, size: int, n_users: int, n_items: int
) -> list[list[Delivery[UserAction]]]:
    """Random actions from twice the model's users (half cold) on one partition, in offset order."""
    rng = np.random.default_rng(1)
    now = time.time()
    out, offset = [], 0
    for _ in range(n_batches):
        batch = []
        users = rng.integers(0, 2 * n_users, size).tolist()
        items = rng.integers(0, n_items, size).tolist()
        for user, item in zip(users, items, strict=True):
            event = UserAction(
                event_id=f"b{offset}",
                user_id=f"u{user}",
                item_id=f"i{item}",
                action=ACTIONS[offset % len(ACTIONS)],
                ts=datetime.fromtimestamp(now, UTC),
            )
            batch.append(Delivery(record(event, offset, now), event))
            offset += 1
        out.append(batch)
    return out


def record(
    event: UserAction, offset: int, now: float, *, partition: int = 0, value: bytes = b""
) -> ConsumerRecord[bytes, bytes]:
    """A ``user-actions`` record of ``event`` keyed by its user (``value``: its payload, if the
    bench decodes it)."""
    key = event.user_id.encode()
    return ConsumerRecord(
        topic="user-actions",
        partition=partition,
        offset=offset,
        timestamp=int(now * 1000),
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=(),
    )


async def one_pass(
    redis: RedisClient,
    serving: ServingModel,
    work: list[list[Delivery[UserAction]]],
    *,
    fenced: bool,
) -> Pass:
    settings = WorkerSettings()
    keys = RedisKeys(f"bench-fence-{uuid.uuid4().hex[:8]}")
    timer = Timer()
    metrics = WorkerMetrics.create()
    history_kwargs = {
        "max_len": settings.history_len,
        "ttl_s": settings.history_ttl_s,
        "bad_members": metrics.bad_history_members,
    }
    history_type = TimedHistory if fenced else UnfencedHistory
    lists = TimedLists(redis, keys, timer) if fenced else UnfencedLists(redis, keys, timer)
    handler = ActionHandler(
        lists=lists,  # type: ignore[arg-type]
        history=history_type(redis, keys, timer, **history_kwargs),
        model=lambda: serving,
        policy=settings.policy,
        max_future_skew_s=settings.max_future_skew_s,
        metrics=metrics,
        writable=asyncio.Event(),
    )
    latencies = []
    try:
        started, cpu = time.perf_counter(), time.process_time()
        for batch in work:
            t0 = time.perf_counter()
            await handler(batch)
            latencies.append(time.perf_counter() - t0)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await delete_prefix(redis, keys.prefix)
    events = sum(len(b) for b in work)
    return Pass(
        events_per_s=events / elapsed,
        batch_p50_ms=float(np.percentile(latencies, 50) * 1000),
        batch_p99_ms=float(np.percentile(latencies, 99) * 1000),
        redis_ms_per_batch=timer.seconds / len(work) * 1000,
        cpu_ms_per_batch=cpu / len(work) * 1000,
    )


async def delete_prefix(redis: RedisClient, prefix: str) -> None:
    """One ``UNLINK`` per key, pipelined: on a Redis Cluster a call's keys must share a slot."""
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
    pipe = redis.pipeline()
    for key in keys:
        pipe.execute_command("UNLINK", key)  # a cluster pipeline's unlink() is not queued
    await pipe.execute()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=500, help="the worker's max_batch")
    parser.add_argument("--users", type=int, default=10_000, help="known users (as many cold)")
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    threadpool_limits(limits=1)  # as the worker (RECO_WORKER_BLAS_THREADS)
    redis = connect(RedisSettings())
    serving = model(args.items, args.users)
    work = batches(args.batches, args.batch_size, args.users, args.items)
    variants = [Variant("unfenced (MSET, plain history script)"), Variant("fenced (this build)")]
    try:
        await one_pass(redis, serving, work[:5], fenced=True)  # warm-up: scripts, caches
        for _ in range(args.rounds):
            for fenced, variant in ((False, variants[0]), (True, variants[1])):
                variant.passes.append(await one_pass(redis, serving, work, fenced=fenced))
                print(variant.name, variant.passes[-1], flush=True)
    finally:
        await redis.aclose()
    base = variants[0].median("events_per_s")
    print(
        f"\n{args.rounds} rounds x {args.batches} batches of {args.batch_size} events, "
        f"{args.items:,} items, {2 * args.users:,} users; medians"
    )
    print("| writes | events/s | vs unfenced | batch p50 ms | batch p99 ms | Redis ms/batch |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in variants:
        rate = v.median("events_per_s")
        print(
            f"| {v.name} | {rate:,.0f} | {rate / base - 1:+.1%} | {v.median('batch_p50_ms'):.1f} "
            f"| {v.median('batch_p99_ms'):.1f} | {v.median('redis_ms_per_batch'):.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
