"""CPU per ``GET`` of the API's read, by Redis client, with concurrent callers like a loaded API.

    uv run python bench/api/redis_client.py [--calls 20000] [--callers 32] [--rounds 3]

A private ``redis-server`` holds one user's list; ``--callers`` coroutines on one uvloop loop each
send ``GET`` of its key in turn (the API's read since key layout 2; before, an ``MGET`` of the
list and the active record, docs/benchmarks.md), ``--calls`` in all. Process CPU
time (which includes the client's own threads, if any) per call, and calls per second of wall
time. Clients: redis-py (``redis.asyncio``, its pool, the hiredis parser when installed, as the
API used it), the API's own :class:`reco_common.pipelined.PipelinedRedis`, and valkey-glide when it
is installed (not a dependency: ``uv pip install valkey-glide`` to include it). With
``--cluster-url`` (``scripts/stack.sh cluster-up``), also redis-py's cluster client and the API's
:class:`reco_common.pipelined_cluster.ClusterPipelinedRedis` reading 1,000 users' keys in turn (so
over every primary; missing keys, the cost is the same).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis
from run import redis_server

from reco_common.pipelined import PipelinedRedis, pack
from reco_common.pipelined_cluster import ClusterPipelinedRedis
from reco_common.redis_store import connect
from reco_common.settings import RedisSettings

MODEL = "default"
Call = Callable[[], Awaitable[Any]]


async def measure(call: Call, *, calls: int, callers: int) -> tuple[float, float]:
    """CPU µs per call and calls per second, ``callers`` coroutines calling in turn."""

    async def caller() -> None:
        for _ in range(calls // callers):
            await call()

    await caller()  # warm up (connections, scripts)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = calls // callers * callers
    return cpu / done * 1e6, done / wall


async def clients(url: str, key: str) -> dict[str, Call]:
    redis_py = Redis.from_url(url, max_connections=64)
    pipelined = PipelinedRedis(url, timeout_s=1.0)
    command = pack("GET", key)
    found: dict[str, Call] = {
        "redis-py": lambda: redis_py.get(key),
        "pipelined (reco_api)": lambda: pipelined.execute(command),
    }
    try:
        from glide import GlideClient, GlideClientConfiguration, NodeAddress
    except ImportError:
        return found
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    glide = await GlideClient.create(GlideClientConfiguration([NodeAddress(host, int(port))]))
    found["valkey-glide"] = lambda: glide.get(key)
    return found


def cluster_clients(url: str) -> dict[str, Call]:
    """The same read on a Redis Cluster, users' keys in turn (so over every primary)."""
    settings = RedisSettings(url=url, key_prefix="bench")
    names = [settings.keys.recommendations(MODEL, f"u{n}") for n in range(1000)]
    commands = [pack("GET", name) for name in names]
    redis_py = connect(settings)
    pipelined = ClusterPipelinedRedis(settings.node_urls(), timeout_s=1.0)
    turn = itertools.count()

    def pipelined_get() -> Awaitable[Any]:
        n = next(turn) % len(names)
        return pipelined.execute(commands[n], key=names[n])

    return {
        "redis-py RedisCluster (cluster)": lambda: redis_py.get(names[next(turn) % len(names)]),
        "pipelined (reco_api, cluster)": pipelined_get,
    }


async def run(url: str, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    settings = RedisSettings(url=url, key_prefix="bench")
    calls = await clients(url, settings.keys.recommendations(MODEL, "u1"))
    if args.cluster_url:
        calls |= cluster_clients(args.cluster_url)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            results[name].append(await measure(call, calls=args.calls, callers=args.callers))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--cluster-url", help="also the cluster clients, e.g. redis+cluster://127.0.0.1:7000"
    )
    args = parser.parse_args()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {__import__('os').getloadavg()}")
    with tempfile.TemporaryDirectory() as tmpdir, redis_server(Path(tmpdir)) as url:
        results = uvloop.run(run(url, args))
    print()
    print(f"| client | CPU µs per GET (median of {args.rounds}) | GET/s (wall) |")
    print("|---|---:|---:|")
    for name, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        rate = statistics.median(r[1] for r in runs)
        print(f"| {name} | {cpu:.1f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
