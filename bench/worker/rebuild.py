"""Rebuild throughput: Redis rebuilt from the ``user-actions`` log after losing it, on the real stack.

A topic of its own (``--partitions``: 3 by default; the contract's ``user-actions`` has 24) is
filled with ``--events`` random actions from ``--users`` users (uniform, so every user has events), then the worker's rebuild (``reco_worker.rebuild``,
what ``reco-worker rebuild`` runs) restores histories and lists from it into an empty key prefix
with a random model (64 dimensions, ``--items`` items, one BLAS thread). Reported: events/s over
the whole rebuild (read, history appends, one list per user), the time to full recovery, and
the CPU seconds of the process (all threads), steadier than wall time on a shared machine, and
those of the Redis server (its every client's: point ``RECO_REDIS_URL`` at a private one).
The topic and the keys are deleted afterwards. Run (needs ``scripts/stack.sh up``):

    uv run python bench/worker/rebuild.py --events 1000000 --users 100000

To compare two builds on the same log (filling 1M events takes minutes on a loaded machine):
``--keep-topic`` leaves the topic (its prefix is printed) and ``--topic-prefix P`` rebuilds from
an existing one without filling or deleting it, e.g. with a worktree of the old commit:

    uv run python bench/worker/rebuild.py --events 1000000 --users 100000 --keep-topic
    uv run python bench/worker/rebuild.py --topic-prefix bench-rebuild-1a2b3c4d-
    (cd ../old && uv run python ../new/bench/worker/rebuild.py --topic-prefix bench-rebuild-1a2b3c4d-)

Redis is given a 30 s socket timeout: a history script over thousands of users can take
seconds on a shared, overloaded Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from fencing import delete_prefix, model
from redis.asyncio import Redis
from threadpoolctl import threadpool_limits

from reco_common.contracts import ActionType, UserAction, encode
from reco_common.kafka import admin_client, ensure_topics, start_producer
from reco_common.redis_store import connect
from reco_common.settings import CommonSettings, KafkaSettings, RedisSettings
from reco_worker.metrics import WorkerMetrics
from reco_worker.rebuild import rebuilder
from reco_worker.settings import WorkerSettings

ACTIONS = list(ActionType)
PARTITIONS = 3


async def fill(
    kafka: KafkaSettings, *, events: int, users: int, items: int, partitions: int
) -> float:
    """Produce the log; returns the seconds it took."""
    topic = kafka.topics.user_actions
    await ensure_topics(kafka, topic, partitions={topic: partitions})
    producer = await start_producer(kafka, linger_ms=20)
    rng = np.random.default_rng(0)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    started = time.perf_counter()
    try:
        for first in range(0, events, 10_000):
            count = min(10_000, events - first)
            user_ids = rng.integers(0, users, count).tolist()
            item_ids = rng.integers(0, items, count).tolist()
            sends = []
            for n, (user, item) in enumerate(zip(user_ids, item_ids, strict=True), first):
                event = UserAction(
                    event_id=f"r{n}",
                    user_id=f"u{user}",
                    item_id=f"i{item}",
                    action=ACTIONS[n % len(ACTIONS)],
                    ts=start + timedelta(seconds=n),
                )
                sends.append(await producer.send(topic, encode(event), key=event.user_id.encode()))
            await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=PARTITIONS, help="of a topic filled")
    parser.add_argument("--keep-topic", action="store_true", help="leave the topic for reuse")
    parser.add_argument("--topic-prefix", help="rebuild from this existing topic (no fill)")
    args = parser.parse_args()
    threadpool_limits(limits=1)
    run = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(topic_prefix=args.topic_prefix or f"bench-rebuild-{run}-")
    redis_settings = RedisSettings(key_prefix=f"bench-rebuild-{run}", socket_timeout_s=30.0)
    settings = WorkerSettings(common=CommonSettings(kafka=kafka, redis=redis_settings))
    if not args.topic_prefix:
        produced = await fill(
            kafka,
            events=args.events,
            users=args.users,
            items=args.items,
            partitions=args.partitions,
        )
        print(f"produced {args.events:,} events in {produced:.1f} s", flush=True)
    print(f"topic prefix {kafka.topic_prefix}; load average {os.getloadavg()}", flush=True)
    redis = connect(redis_settings)
    try:
        serving = model(args.items, args.users // 2)
        work = rebuilder(settings, redis, serving, WorkerMetrics.create())
        redis_cpu = await redis_cpu_s(redis)
        cpu = time.process_time()
        report = await work.run(kafka)
        cpu = time.process_time() - cpu
        redis_cpu = await redis_cpu_s(redis) - redis_cpu
    finally:
        await delete_prefix(redis, redis_settings.key_prefix)
        await redis.aclose()
        if not (args.keep_topic or args.topic_prefix):
            async with admin_client(kafka) as admin:
                await admin.delete_topics([kafka.topics.user_actions])
    print(f"load average {os.getloadavg()}")
    print(report, flush=True)
    print(
        "\n| events | users | items | rebuild events/s | full recovery | of which after the read "
        "| CPU s (all threads) | events per CPU-s | Redis CPU s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {report.events:,} | {report.users:,} | {args.items:,} | "
        f"{report.events_per_s:,.0f} | {report.seconds:.0f} s | {report.lists_seconds:.0f} s "
        f"| {cpu:.1f} | {report.events / cpu:,.0f} | {redis_cpu:.1f} |"
    )


async def redis_cpu_s(redis: Redis) -> float:
    """The Redis server's CPU seconds so far (all its clients': a private server's are ours)."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


if __name__ == "__main__":
    asyncio.run(main())
