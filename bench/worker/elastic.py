"""Worker freshness while the group is scaled 1 → 4 → 2 under a steady stream, on the real stack.

What the elastic-workers component (KEDA) does to the worker Deployment, done on processes:
events are produced at a steady rate (stamped when sent) through the whole run; one
``reco-worker`` process consumes; three more are started (the group rebalances to four); then
two of them, the first among them, get SIGTERM as Kubernetes stops a pod on a scale-down (each
finishes its batch, commits and leaves the group) and two remain. Reported per window —
steady with 1, 4 and 2 workers, and the two rebalances (from the scale action until
``--settle-s`` after the group is stable with the new count) — freshness p50/p99 (event time →
the Redis write, the workers' own ``reco_worker_freshness_seconds`` summed over the live
workers, interpolated in the buckets like ``histogram_quantile``), the events handled, the
most lag seen (the group's committed offsets against the topic's end, every 0.5 s), and for
a rebalance how long it took from the action until the new workers were ready (or the stopped
ones had exited) and until the group was stable with every member.

A stopped worker's last batch (after the scrape just before its SIGTERM) is not in the figures.
Run (needs ``scripts/stack.sh up``):

    uv run python bench/worker/elastic.py --items 10000 --rate 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fencing import delete_prefix
from throughput import (
    Events,
    Scraper,
    buckets,
    build_model,
    free_port,
    produce_at,
    quantile,
    start_worker,
    until,
    value,
)

from reco_common.contracts import Topics
from reco_common.kafka import ensure_topics, start_producer
from reco_common.redis_store import connect
from reco_common.settings import KafkaSettings, RedisSettings

FRESHNESS = "reco_worker_freshness_seconds"
CONSUMED = "reco_worker_events_consumed_total"
Metrics = dict[str, list[tuple[dict[str, str], float]]]


@dataclass
class Window:
    name: str
    workers: int
    seconds: float = 0.0
    events: int = 0
    freshness_p50_ms: float = float("nan")
    freshness_p99_ms: float = float("nan")
    max_lag: int = 0
    changed_s: float | None = None  # the new workers ready, or the stopped ones exited
    stable_s: float | None = None  # the group stable with every member


@dataclass
class Member:
    name: str
    process: asyncio.subprocess.Process
    scraper: Scraper
    last: Metrics = field(default_factory=dict)  # the scrape before it stopped


class Group:
    """The consumer group of the run's workers: its lag, state and member count."""

    def __init__(self, kafka: KafkaSettings, group_id: str) -> None:
        topic = kafka.topics.user_actions
        self._partitions = [TopicPartition(topic, p) for p in range(kafka.topics.partitions(topic))]
        self._consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        self._group_id = group_id
        self.max_lag = 0

    async def start(self) -> None:
        await self._consumer.start()
        await self._admin.start()

    async def close(self) -> None:
        await self._admin.close()
        await self._consumer.stop()

    async def lag(self) -> int:
        ends = await self._consumer.end_offsets(self._partitions)
        committed = await self._admin.list_consumer_group_offsets(self._group_id)
        done = {tp: c.offset for tp, c in committed.items() if c.offset >= 0}
        return sum(end - done.get(tp, 0) for tp, end in ends.items())

    async def stable_with(self, members: int) -> bool:
        (response,) = await self._admin.describe_consumer_groups([self._group_id])
        (group,) = response.to_object()["groups"]
        return bool(group["state"] == "Stable" and len(group["members"]) == members)

    async def watch_lag(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.max_lag = max(self.max_lag, await self.lag())
            await asyncio.sleep(0.5)


class Fleet:
    """The run's ``reco-worker`` processes."""

    def __init__(self, uri: str, prefix: str, workdir: Path, logs: Path) -> None:
        self._uri, self._prefix, self._workdir, self._logs = uri, prefix, workdir, logs
        self.live: list[Member] = []
        self.gone: list[Member] = []

    async def add(self, count: int) -> list[Member]:
        added = []
        for _ in range(count):
            name = f"w{len(self.live) + len(self.gone) + len(added)}"
            port = free_port()
            process = await start_worker(
                self._uri,
                self._prefix,
                port=port,
                cache_dir=self._workdir / name,
                log=self._logs / f"worker-elastic-{name}.log",
            )
            added.append(Member(name, process, Scraper(port)))
        self.live += added
        return added

    async def remove(self, members: list[Member]) -> list[int]:
        """SIGTERM, after a last scrape; the exit codes."""
        for m in members:
            m.last = await m.scraper.metrics()
            m.process.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(m.process.wait(), timeout=60) for m in members]
        for m in members:
            await m.scraper.close()
            self.live.remove(m)
            self.gone.append(m)
        return codes

    async def scrape(self) -> dict[str, Metrics]:
        """Every worker's metrics: the live ones' that answer (not the ones still starting),
        and the stopped ones' last."""
        found = {m.name: m.last for m in self.gone}
        for m in self.live:
            try:
                found[m.name] = await m.scraper.metrics()
            except httpx.TransportError:
                continue
        return found

    async def all_ready(self) -> bool:
        return all([await m.scraper.ready() for m in self.live])


def summed(
    snapshots: dict[str, Metrics], name: str, like: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The workers' cumulative buckets of ``name`` added up (``like``'s bounds, zero if none)."""
    total = [(le, 0.0) for le, _ in like]
    for metrics in snapshots.values():
        for i, (_, count) in enumerate(buckets(metrics, name)):
            total[i] = (total[i][0], total[i][1] + count)
    return total


async def measure(
    window: Window, fleet: Fleet, group: Group, body: Callable[[], Awaitable[None]]
) -> Window:
    """Run ``body`` and fill ``window`` with what the workers observed meanwhile."""
    before = await fleet.scrape()
    group.max_lag = 0
    started = time.monotonic()
    await body()
    window.seconds = time.monotonic() - started
    after = await fleet.scrape()
    bounds = next(buckets(m, FRESHNESS) for m in after.values() if buckets(m, FRESHNESS))
    first, last = summed(before, FRESHNESS, bounds), summed(after, FRESHNESS, bounds)
    window.freshness_p50_ms = quantile(0.5, first, last) * 1000
    window.freshness_p99_ms = quantile(0.99, first, last) * 1000
    window.events = int(
        sum(value(m, CONSUMED) for m in after.values())
        - sum(value(m, CONSUMED) for m in before.values())
    )
    window.max_lag = group.max_lag
    print(json.dumps(asdict(window)), flush=True)
    return window


async def run(args: argparse.Namespace, workdir: Path) -> list[Window]:
    uri, _ = build_model(workdir / "store", args.items, seed=args.items)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    kafka = KafkaSettings(topic_prefix=prefix)
    topic = kafka.topics.user_actions
    await ensure_topics(kafka, topic, Topics.dlq(topic))
    producer = await start_producer(kafka)
    group = Group(kafka, f"{prefix}worker-bench")
    await group.start()
    fleet = Fleet(uri, prefix, workdir, args.output.parent)
    stop, events = asyncio.Event(), Events(args.items, seed=1)
    windows: list[Window] = []
    try:
        (first,) = await fleet.add(1)
        await until(first.scraper.ready, timeout_s=300, what="the first worker")
        streaming = asyncio.create_task(produce_at(producer, topic, events, args.rate, stop=stop))
        watching = asyncio.create_task(group.watch_lag(stop))
        await asyncio.sleep(args.warmup_s)

        async def steady() -> None:
            await asyncio.sleep(args.phase_s)

        async def scale(change: Callable[[], Awaitable[object]], window: Window) -> None:
            started = time.monotonic()
            await change()
            await until(fleet.all_ready, timeout_s=300, what="every worker to be ready")
            window.changed_s = time.monotonic() - started

            async def stable() -> bool:
                return await group.stable_with(window.workers)

            await until(stable, timeout_s=300, what=f"a stable group of {window.workers}")
            window.stable_s = time.monotonic() - started
            await asyncio.sleep(args.settle_s)

        out, shrink = Window("scale-out 1 → 4", 4), Window("scale-in 4 → 2", 2)
        windows.append(await measure(Window("steady, 1 worker", 1), fleet, group, steady))
        windows.append(await measure(out, fleet, group, lambda: scale(lambda: fleet.add(3), out)))
        windows.append(await measure(Window("steady, 4 workers", 4), fleet, group, steady))
        leaving = fleet.live[:2]
        windows.append(
            await measure(
                shrink, fleet, group, lambda: scale(lambda: fleet.remove(leaving), shrink)
            )
        )
        windows.append(await measure(Window("steady, 2 workers", 2), fleet, group, steady))
        stop.set()
        sent = await streaming
        await watching

        async def drained() -> bool:
            return await group.lag() == 0

        await until(drained, timeout_s=300, what="the stream to drain")
        print(f"sent {sent} events at {args.rate}/s; all committed", flush=True)
    finally:
        stop.set()
        codes = await fleet.remove(list(fleet.live))
        print(f"exit codes of the last workers: {codes}", flush=True)
        await group.close()
        await producer.stop()
        redis = connect(RedisSettings())
        await delete_prefix(redis, prefix.rstrip("-"))
        await redis.aclose()
    return windows


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=300, help="events/s through the whole run")
    parser.add_argument("--phase-s", type=float, default=15.0, help="each steady window")
    parser.add_argument("--settle-s", type=float, default=5.0, help="after a stable group")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=Path("var/bench/worker-elastic.json"))
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="reco-bench-elastic-") as tmp:
        windows = await run(args, Path(tmp))
    args.output.write_text(json.dumps([asdict(w) for w in windows], indent=2))
    print(
        f"\n{args.items:,} items, {args.rate:,} events/s; load average at the start "
        f"{load[0]:.1f}, at the end {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| window | workers | seconds | events | freshness p50 ms | p99 ms | most lag "
        "| ready / exited s | stable s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in windows:
        changed, stable = ("" if t is None else f"{t:.1f}" for t in (w.changed_s, w.stable_s))
        print(
            f"| {w.name} | {w.workers} | {w.seconds:.1f} | {w.events:,} | {w.freshness_p50_ms:.1f} "
            f"| {w.freshness_p99_ms:.1f} | {w.max_lag:,} | {changed} | {stable} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
