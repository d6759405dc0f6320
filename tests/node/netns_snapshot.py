"""Run inside the node's network namespace (``ip netns exec``), where the Redis Service's address
routes: prints one JSON object, for each key prefix given, the state the e2e tier compares (every
list without ``computed_at`` and every history under that prefix, ``e2e_support.snapshot``).

    ip netns exec NS python tests/node/netns_snapshot.py redis://10.96.0.30:6379/0 reco clean1
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgspec
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_support import snapshot


async def _states(url: str, prefixes: list[str]) -> dict[str, object]:
    redis = Redis.from_url(url)
    try:
        return {prefix: await snapshot(redis, prefix) for prefix in prefixes}
    finally:
        await redis.aclose()


if __name__ == "__main__":
    url, *prefixes = sys.argv[1:]
    sys.stdout.buffer.write(msgspec.json.encode(asyncio.run(_states(url, prefixes))))
