"""Redis memory per user, as a real worker writes it: list, history and fence, by MEMORY USAGE.

One ``reco-worker`` process (a random model, 64 dimensions) consumes two kinds of users from
the dev stack's Kafka: *full* users with more events than the history keeps (their history at
``RECO_WORKER_HISTORY_LEN``, 200 by default) and *one-event* users. Then ``MEMORY USAGE … SAMPLES
0`` (exact) of each user's keys — the list of ``RECO_WORKER_TOP_N`` (100) items, the history,
the fence hash — averaged per kind; and over the run the growth of ``used_memory`` per user
(allocator and key overhead included) and the Redis server's CPU per event (both include
whatever else the server did meanwhile: point ``RECO_REDIS_URL`` at a private one for clean
figures). Event ids are UUIDs (36 characters), item ids ``i<n>``
(2 to 7 characters): longer ids make the lists and histories larger. Run (needs ``scripts/stack.sh up``):

    uv run python bench/worker/memory.py --full-users 300 --one-event-users 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from elastic import Group
from fencing import delete_prefix
from throughput import Scraper, build_model, free_port, send, start_worker, until

from reco_common.contracts import ActionType, Topics, UserAction
from reco_common.kafka import ensure_topics, start_producer
from reco_common.redis_store import connect
from reco_common.settings import KafkaSettings, RedisSettings

MODEL = "bench"  # throughput.build_model's model name
ACTIONS = list(ActionType)


def actions(users: list[str], per_user: int, n_items: int, seed: int) -> list[UserAction]:
    """``per_user`` events for each user, a second apart, random items; users interleaved."""
    rng = np.random.default_rng(seed)
    start = datetime.now(UTC) - timedelta(seconds=per_user)
    return [
        UserAction(
            event_id=str(uuid.uuid4()),
            user_id=user,
            item_id=f"i{int(rng.integers(n_items))}",
            action=ACTIONS[k % len(ACTIONS)],
            ts=start + timedelta(seconds=k),
        )
        for k in range(per_user)
        for user in users
    ]


async def usage(redis_settings: RedisSettings, users: list[str]) -> dict[str, float]:
    """Mean exact MEMORY USAGE per key kind of ``users``, and the history's mean length."""
    keys = redis_settings.keys
    redis = connect(redis_settings)
    try:
        kinds = {
            "list": [keys.recommendations(MODEL, u) for u in users],
            "history": [keys.history(u) for u in users],
            "fence": [keys.user_fence(u) for u in users],
        }
        out = {
            kind: statistics.mean([await redis.memory_usage(k, samples=0) or 0 for k in names])
            for kind, names in kinds.items()
        }
        out["history_length"] = statistics.mean([await redis.zcard(k) for k in kinds["history"]])
    finally:
        await redis.aclose()
    return out


async def server(redis_settings: RedisSettings) -> tuple[int, float]:
    """The Redis server's ``used_memory`` and CPU seconds (user + system) so far."""
    redis = connect(redis_settings)
    try:
        memory, cpu = await redis.info("memory"), await redis.info("cpu")
    finally:
        await redis.aclose()
    return int(memory["used_memory"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, dict[str, float]]:
    uri, _ = build_model(workdir / "store", args.items, seed=args.items)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    kafka, redis_settings = KafkaSettings(topic_prefix=prefix), RedisSettings()
    redis_settings = redis_settings.model_copy(update={"key_prefix": prefix.rstrip("-")})
    topic = kafka.topics.user_actions
    await ensure_topics(kafka, topic, Topics.dlq(topic))
    full = [f"full{n}" for n in range(args.full_users)]
    single = [f"one{n}" for n in range(args.one_event_users)]
    events = actions(full, args.events_per_full_user, args.items, seed=1)
    events += actions(single, 1, args.items, seed=2)
    producer = await start_producer(kafka)
    group = Group(kafka, f"{prefix}worker-{MODEL}")
    await group.start()
    port = free_port()
    memory_before, cpu_before = await server(redis_settings)
    process = await start_worker(
        uri, prefix, port=port, cache_dir=workdir / "cache", log=args.output.parent / "memory.log"
    )
    scraper = Scraper(port)
    try:
        for start in range(0, len(events), 1000):
            await send(producer, topic, events[start : start + 1000])
        await until(scraper.ready, timeout_s=300, what="the worker")

        async def drained() -> bool:
            return await group.lag() == 0

        await until(drained, timeout_s=1800, what="every event applied")
        memory_after, cpu_after = await server(redis_settings)
        results = {
            "full": await usage(redis_settings, full),
            "one event": await usage(redis_settings, single),
        }
        results["server"] = {
            "used_memory_per_user": (memory_after - memory_before) / (len(full) + len(single)),
            "cpu_us_per_event": (cpu_after - cpu_before) / len(events) * 1e6,
        }
    finally:
        await scraper.close()
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=60)
        await group.close()
        await producer.stop()
        redis = connect(redis_settings)
        await delete_prefix(redis, redis_settings.key_prefix)
        await redis.aclose()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--full-users", type=int, default=300)
    parser.add_argument("--events-per-full-user", type=int, default=220)
    parser.add_argument("--one-event-users", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=Path("var/bench/worker-memory.json"))
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reco-bench-memory-") as tmp:
        results = await run(args, Path(tmp))
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}\n")
    print("| users | history length | list B | history B | fence B | keys B per user |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in ("full", "one event"):
        r = results[kind]
        total = r["list"] + r["history"] + r["fence"]
        print(
            f"| {kind} | {r['history_length']:.0f} | {r['list']:,.0f} | {r['history']:,.0f} "
            f"| {r['fence']:,.0f} | {total:,.0f} |"
        )
    figures = results["server"]
    print(
        f"\nRedis server over the run: `used_memory` +{figures['used_memory_per_user']:,.0f} B "
        f"per user, {figures['cpu_us_per_event']:.0f} µs CPU per event"
    )


if __name__ == "__main__":
    asyncio.run(main())
