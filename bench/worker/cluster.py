"""The worker's batch handler on one Redis and on a Redis Cluster, in the same run.

The same batches of user actions go through the production ``ActionHandler`` (real scoring,
real Redis, the fenced writers) once per round on each Redis, in alternation: the single server
of ``scripts/stack.sh up`` (``RECO_REDIS_URL``) and the cluster of ``scripts/stack.sh
cluster-up`` (``--cluster-url``), where a batch's fenced scripts go one per slot, all at once
through the self-pipelining cluster client (``reco_common.redis_store.call_per_slot``). Each pass starts from empty keys under its own prefix, deleted afterwards. Reported per
Redis (median over rounds): events/s through the handler, its per-batch latency p50/p99, the
time spent in the two Redis calls and this process' CPU per batch; and the cluster's rate over
the single server's pass just before it, per round. The Kafka fetch and commit are the same on both and left out,
so the ratio here bounds the worker's. Run:

    scripts/stack.sh up redis && scripts/stack.sh cluster-up
    uv run python bench/worker/cluster.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime

from fencing import Variant, batches, model, one_pass
from threadpoolctl import threadpool_limits

from reco_common.redis_store import connect
from reco_common.settings import RedisSettings

CLUSTER_URL = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=500, help="the worker's max_batch")
    parser.add_argument("--users", type=int, default=10_000, help="known users (as many cold)")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--cluster-url", default=CLUSTER_URL)
    args = parser.parse_args()
    threadpool_limits(limits=1)  # as the worker (RECO_WORKER_BLAS_THREADS)
    clients = {
        "single Redis": connect(RedisSettings()),
        "Redis Cluster (3 primaries)": connect(RedisSettings(url=args.cluster_url)),
    }
    serving = model(args.items, args.users)
    work = batches(args.batches, args.batch_size, args.users, args.items)
    variants = {name: Variant(name) for name in clients}
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {os.getloadavg()}")
    try:
        for redis in clients.values():
            await one_pass(redis, serving, work[:5], fenced=True)
        for _ in range(args.rounds):
            for name, redis in clients.items():
                variants[name].passes.append(await one_pass(redis, serving, work, fenced=True))
                print(name, variants[name].passes[-1], flush=True)
    finally:
        for redis in clients.values():
            await redis.aclose()
    print(f"load average after: {os.getloadavg()}")
    base = variants["single Redis"].median("events_per_s")
    print(
        f"\n{args.rounds} rounds x {args.batches} batches of {args.batch_size} events, "
        f"{args.items:,} items, {2 * args.users:,} users; medians"
    )
    print(
        "| Redis | events/s | vs single | batch p50 ms | batch p99 ms | Redis ms/batch "
        "| CPU ms/batch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v in variants.values():
        rate = v.median("events_per_s")
        print(
            f"| {v.name} | {rate:,.0f} | {rate / base:.2f}x | {v.median('batch_p50_ms'):.1f} "
            f"| {v.median('batch_p99_ms'):.1f} | {v.median('redis_ms_per_batch'):.1f} "
            f"| {v.median('cpu_ms_per_batch'):.1f} |"
        )
    single, cluster = (v.passes for v in variants.values())
    ratios = [c.events_per_s / s.events_per_s for s, c in zip(single, cluster, strict=True)]
    print("cluster / single per round: " + ", ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    asyncio.run(main())
