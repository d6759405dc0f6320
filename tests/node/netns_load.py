"""A load client run inside the node's network namespace (``ip netns exec``), where Service
and pod addresses route: GETs ``URL`` from ``--clients`` concurrent clients until SIGTERM (or
``--max-s``), then prints one JSON line of counts.

Each request opens a new connection, and a connection that is refused or reset before any
byte of the answer is retried (that request was never seen by a server): the client a load
balancer's users have. Anything else is a failure: an error status, a timeout, a connection
dropped while the answer was on its way.

    ip netns exec NS python tests/node/netns_load.py http://10.96.0.20/healthz
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections import Counter

import httpx

RETRY_PAUSE_S = 0.05
MAX_RETRIES = 200  # 10 s of refused connections for one request: a failure after that


async def _one(client: httpx.AsyncClient, url: str, counts: Counter[str]) -> None:
    for _ in range(MAX_RETRIES):
        try:
            answer = await client.get(url)
        except httpx.ConnectError:
            counts["retried_connect"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        except httpx.HTTPError as exc:
            counts[f"failed_{type(exc).__name__}"] += 1
            return
        counts["ok" if answer.is_success else f"failed_status_{answer.status_code}"] += 1
        return
    counts["failed_refused_too_long"] += 1


async def _client(url: str, stop: asyncio.Event, deadline: float, counts: Counter[str]) -> None:
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
    async with httpx.AsyncClient(timeout=5.0, limits=limits) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            await _one(client, url, counts)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-s", type=float, default=600.0)
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    deadline = time.monotonic() + args.max_s
    await asyncio.gather(*(_client(args.url, stop, deadline, counts) for _ in range(args.clients)))
    print(json.dumps(dict(counts), sort_keys=True), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
