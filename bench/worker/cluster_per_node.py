"""What a batch's list write would cost on a Redis Cluster grouped per node instead of per slot.

Not the shipped writer: ``FencedLists`` (one ``EVALSHA`` per slot, the scripts' keys declared,
single-slot, all sent at once by the self-pipelining cluster client) against an experimental
variant of the same fenced write, in one redis-py cluster pipeline, with one ``EVAL`` per primary: one declared key routes the call, the users' keys are passed as
arguments (Redis runs a script that touches keys of other slots on its own node when they were
not declared). ``--users`` lists of 800 bytes, ``--rounds`` rounds; process CPU and wall time
per write. Run against ``scripts/stack.sh cluster-up``:

    uv run python bench/worker/cluster_per_node.py --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

from fencing import delete_prefix

from reco_common.redis_store import (
    _REPLACE_IF_NEWER,
    LUA_HELPERS,
    FencedLists,
    FencedWrite,
    Position,
    connect,
    framed,
    slot_of,
)
from reco_common.settings import RedisSettings

# The shipped list write (FencedLists' script), its KEYS read from two more framed arguments.
_PER_NODE = _REPLACE_IF_NEWER.replace(
    LUA_HELPERS, LUA_HELPERS + "local KEYS = unframed(ARGV[3], ARGV[4])\n", 1
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis+cluster://127.0.0.1:7000")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    settings = RedisSettings(url=args.url, key_prefix=f"bench-pn-{uuid.uuid4().hex[:8]}")
    redis, keys = connect(settings), settings.keys
    await redis.initialize()  # type: ignore[union-attr]
    per_slot = FencedLists(redis, keys)
    users = [f"u{n}" for n in range(args.users)]
    value = b"x" * 800
    timings: dict[str, list[tuple[float, float]]] = {"per slot (shipped)": [], "per node": []}
    print(f"load average {os.getloadavg()}")
    for offset in range(1, args.rounds + 2):
        groups: dict[str, list[str]] = {}
        for user in users:
            node = redis.nodes_manager.get_node_from_slot(slot_of(keys.user_fence(user)))  # type: ignore[union-attr]
            groups.setdefault(node.name, []).append(user)
        cpu, wall = time.process_time(), time.perf_counter()
        pipe = redis.pipeline()
        for members in groups.values():
            framed_args: list[bytes | str | int] = [0, len(members)]  # or_equal, count
            framed_keys: list[bytes | str | int] = []
            for user in members:
                framed_args += (keys.lists_fence_field(0, "m"), offset, value)
                framed_keys += (keys.user_fence(user), keys.recommendations("m", user))
            route = keys.user_fence(members[0])
            pipe.execute_command(
                "EVAL", _PER_NODE, 1, route, *framed(framed_args), *framed(framed_keys)
            )
        await pipe.execute()
        per_node = (time.process_time() - cpu, time.perf_counter() - wall)
        cpu, wall = time.process_time(), time.perf_counter()
        await per_slot.replace("m2", {u: FencedWrite(value, Position(0, offset)) for u in users})
        shipped = (time.process_time() - cpu, time.perf_counter() - wall)
        if offset > 1:  # the first round loads scripts and connections
            timings["per node"].append(per_node)
            timings["per slot (shipped)"].append(shipped)
    await delete_prefix(redis, keys.prefix)
    await redis.aclose()
    print(f"load average after {os.getloadavg()}")
    print(f"| write of {args.users} lists | CPU ms (median) | wall ms (median) |")
    print("|---|---:|---:|")
    for name, runs in timings.items():
        print(
            f"| {name} | {statistics.median(r[0] for r in runs) * 1e3:.1f} "
            f"| {statistics.median(r[1] for r in runs) * 1e3:.1f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
