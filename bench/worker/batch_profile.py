"""The worker's per-batch path without Kafka's network: CPU per event and batch latency, real Redis.

``throughput.py``'s model and events (10k items x 64 dimensions + bias, 100k users, events from
200k users, half cold, uniform items), encoded as Kafka records of 3 partitions, go through
the production :class:`reco_common.kafka.EventConsumer.process` (decode, the worker's
``ActionHandler``: coalesce, history script, scoring, list encoding, the fenced list write,
metrics; then the dead-letter stage and the commit) in batches of 500. Only the Kafka client
underneath is replaced by a stand-in that accepts the commit without a round trip, so that the
figure is the process' own work (its CPU seconds, all threads) plus Redis round trips.

    RECO_REDIS_URL=redis://127.0.0.1:6491/0 uv run python bench/worker/batch_profile.py
    ... --profile var/bench/batch.prof        # cProfile of the passes (main thread)
    ... --batch-size 14                       # batches as at a steady 1,000 events/s
    ... --items 1000000 --decay 1.2 --ivf     # the 1M catalog through the IVF index
    ... --items 1000000 --decay 1.2 --scann   # ... through the ScaNN index

Each pass writes under a fresh key prefix, deleted after. ``--passes`` passes of ``--batches``
batches; the first pass (warm-up: scripts loaded, caches) is not reported.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import ConsumerRecord, TopicPartition
from fencing import record
from prometheus_client import REGISTRY
from threadpoolctl import threadpool_limits
from throughput import build_model

from reco_common.contracts import ActionType, UserAction, encode
from reco_common.kafka import EventConsumer
from reco_common.redis_store import RedisClient, connect
from reco_common.settings import KafkaSettings, RedisSettings, S3Settings
from reco_worker.consumer import ActionHandler
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import load_serving_model
from reco_worker.rebuild import stores
from reco_worker.scoring import ServingModel
from reco_worker.settings import WorkerSettings
from reco_worker.topn import IndexUse

N_USERS = 100_000
PARTITIONS = 3
ACTIONS = list(ActionType)


def model(
    n_items: int,
    workdir: Path,
    *,
    decay: float = 0.0,
    ivf: bool = False,
    scann: bool = False,
    probes: int = 0,
) -> ServingModel:
    """``throughput.py``'s random model (seeded by the catalog size, as there), written as an
    artifact and loaded from it as the worker does (factors and index mapped); ``ivf``: with
    the trainer's IVF index, searched from any catalog size with ``probes`` lists (0: as
    many as its recall curve gives the default recall), as ``throughput.py --ivf
    --ann-min-items 0``; ``scann``: ScaNN's index instead, ``probes`` its leaves searched."""
    uri, _ = build_model(
        workdir / "store",
        n_items,
        seed=n_items,
        decay=decay,
        ivf_lists=0 if ivf else None,
        scann_leaves=0 if scann else None,
    )
    use = IndexUse(min_items=0, probes=probes or None) if ivf or scann else None
    return load_serving_model(uri, s3=S3Settings(), cache_dir=workdir / "cache", index_use=use)


Fetched = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


def fetches(n_batches: int, size: int, n_items: int) -> list[Fetched]:
    """Batches of ``size`` records keyed by user, spread over the partitions by user."""
    rng = np.random.default_rng(1)
    offsets = [0] * PARTITIONS
    out: list[Fetched] = []
    n = 0
    for _ in range(n_batches):
        now = datetime.now(UTC)
        batch: Fetched = {}
        users = rng.integers(0, 2 * N_USERS, size).tolist()
        items = rng.integers(0, n_items, size).tolist()
        for user, item in zip(users, items, strict=True):
            n += 1
            event = UserAction(
                event_id=f"b{n}",
                user_id=f"u{user}",
                item_id=f"i{item}",
                action=ACTIONS[n % len(ACTIONS)],
                ts=now,
            )
            partition = user % PARTITIONS
            tp = TopicPartition("user-actions", partition)
            batch.setdefault(tp, []).append(
                record(
                    event,
                    offsets[partition],
                    now.timestamp(),
                    partition=partition,
                    value=encode(event),
                )
            )
            offsets[partition] += 1
        out.append(batch)
    return out


class _Client:
    """Stands in for the aiokafka consumer under ``EventConsumer.process``: commits at once."""

    async def commit(self, offsets: Any) -> None:
        return None

    def highwater(self, tp: TopicPartition) -> None:
        return None

    def assignment(self) -> set[TopicPartition]:
        return set()


async def one_pass(
    redis: RedisClient,
    serving: ServingModel,
    work: list[Fetched],
    profiler: cProfile.Profile | None = None,
) -> tuple[float, float, list[float]]:
    """Events per CPU second, per wall second, and each batch's wall seconds."""
    settings = WorkerSettings(common={"redis": {"key_prefix": f"bench-bp-{uuid.uuid4().hex[:8]}"}})
    metrics = WorkerMetrics.create()
    history, lists = stores(settings, redis, metrics)
    handler = ActionHandler(
        lists=lists,
        history=history,
        model=lambda: serving,
        policy=settings.policy,
        max_future_skew_s=settings.max_future_skew_s,
        metrics=metrics,
        writable=asyncio.Event(),
    )
    consumer: EventConsumer[UserAction] = EventConsumer(
        settings=KafkaSettings(),
        topic="user-actions",
        group_id="bench",
        model=UserAction,
        handler=handler,
        producer=None,  # type: ignore[arg-type]  # no rejections here
        metrics=metrics.consumer,
    )
    consumer._consumer = _Client()  # type: ignore[assignment]
    latencies = []
    try:
        if profiler:
            profiler.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for batch in work:
            t0 = time.perf_counter()
            await consumer.process(batch)
            latencies.append(time.perf_counter() - t0)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        if profiler:
            profiler.disable()
    finally:
        await _delete_prefix(redis, settings.common.redis.keys.prefix)
    events = sum(len(r) for b in work for r in b.values())
    if REGISTRY.get_sample_value("reco_worker_handler_retries_total"):
        raise RuntimeError("a batch failed (see the log)")
    return events / cpu, events / wall, latencies


async def _delete_prefix(redis: RedisClient, prefix: str) -> None:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=10_000)]
    for start in range(0, len(keys), 10_000):
        await redis.unlink(*keys[start : start + 10_000])


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument(
        "--decay", type=float, default=0.0, help="spectrum decay of the model (0: isotropic)"
    )
    parser.add_argument("--ivf", action="store_true", help="build and search an IVF index")
    parser.add_argument("--scann", action="store_true", help="build and search a ScaNN index")
    parser.add_argument(
        "--probes", type=int, default=0, help="IVF lists or ScaNN leaves (0: by the recall)"
    )
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument(
        "--gc-freeze",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="freeze the objects alive after the model's load, as the worker does (builds "
        "before session 7 did not: --no-gc-freeze when running this file against them)",
    )
    args = parser.parse_args()
    threadpool_limits(limits=1)  # as the worker (RECO_WORKER_BLAS_THREADS)
    redis = connect(RedisSettings())
    workdir = Path(tempfile.mkdtemp(prefix="reco-bench-bp-"))
    serving = model(
        args.items, workdir, decay=args.decay, ivf=args.ivf, scann=args.scann, probes=args.probes
    )
    if args.gc_freeze:  # as the worker's model store does once a model is loaded
        gc.collect()
        gc.freeze()
    work = fetches(args.batches, args.batch_size, args.items)
    profiler = cProfile.Profile() if args.profile else None
    results = []
    try:
        await one_pass(redis, serving, work[:5])
        for _ in range(args.passes):
            per_cpu, per_s, latencies = await one_pass(redis, serving, work, profiler)
            results.append(per_cpu)
            p50, p99 = np.percentile(latencies, [50, 99]) * 1000
            print(
                f"events/CPU-s {per_cpu:,.0f}  events/s {per_s:,.0f}  batch p50 {p50:.2f} ms "
                f"p99 {p99:.2f} ms  max {max(latencies) * 1000:.1f} ms",
                flush=True,
            )
    finally:
        await redis.aclose()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"median events/CPU-s {statistics.median(results):,.0f}")
    if profiler and args.profile:
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    asyncio.run(main())
