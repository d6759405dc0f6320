"""Worker benchmark: events/s per process and freshness at a steady rate, on the real stack.

For each catalog size: a random model (64 dimensions + bias) is written to a local artifact
store, one ``reco-worker`` process is started against the dev stack's Kafka and Redis, and

1. *throughput*: a backlog of events is produced first, then drained; events/s is the slope of
   the worker's own ``reco_worker_events_consumed_total`` while it drains (also per CPU second
   of the worker process, which is steadier on a shared machine);
2. *freshness*: events are produced at a steady rate (stamped when sent) for a while; p50/p99
   of ``reco_worker_freshness_seconds`` (event time → Redis write) over that window, interpolated
   inside the histogram's buckets like Prometheus' ``histogram_quantile``.

Half of the events come from users the model knows, half from cold-start users; every user has
a few items of history after the first events. Run (needs ``scripts/stack.sh up``):

    uv run python bench/worker/throughput.py --items 10000 100000 1000000

``--index`` builds the approximate top-N index into the artifact (as the trainer does, timed)
and lets the worker search it from ``--ann-min-items`` up; before the worker starts, the
recall@100 of its lists against exact search is measured in process on the same model, with
the real-time policy's queries (known and cold users with a few recent items, their seen items
excluded), and the model load timed as the worker does it (empty cache, then verified).
``--ivf`` builds the IVF lists instead, ``--scann`` ScaNN's quantized partitions (each with its
recall by probed lists or searched leaves; the worker searches as few as ``--ann-recall``
needs, or ``--ann-probes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from aiokafka import AIOKafkaProducer
from ann_libraries import factors
from ivf import catalog as ivf_catalog
from prometheus_client.parser import text_string_to_metric_families
from threadpoolctl import threadpool_limits

from reco_common.ann import IndexParams, ItemIndex
from reco_common.artifact import ModelArrays, write_artifact
from reco_common.contracts import (
    MODEL_URI_ENV,
    ActionType,
    EvalMetrics,
    HistoryEntry,
    Topics,
    UserAction,
    encode,
)
from reco_common.ivf import IvfIndex, model_queries
from reco_common.kafka import ensure_topics, start_producer
from reco_common.scann_index import ScannIndex
from reco_common.settings import KafkaSettings, S3Settings
from reco_common.storage import open_store
from reco_worker.model_store import load_serving_model
from reco_worker.scoring import Histories, Policy, Ranked, ServingModel, score
from reco_worker.topn import IndexUse

DIM = 64
N_USERS = 100_000
ACTIONS = list(ActionType)


@dataclass
class Result:
    items: int
    backlog_events: int
    events_per_s: float
    events_per_cpu_s: float
    mean_batch: float
    rate: int
    sent: int
    freshness_p50_ms: float
    freshness_p99_ms: float
    steady_mean_batch: float
    steady_recompute_ms: float
    steady_handler_share: float
    index: dict[str, float] | None = None
    decay: float = 0.0


def build_model(
    root: Path,
    n_items: int,
    seed: int,
    index: IndexParams | None = None,
    decay: float = 0.0,
    ivf_lists: int | None = None,
    categories: int = 0,
    scann_leaves: int | None = None,
) -> tuple[str, float]:
    """The artifact's URI, and the seconds its index took to build (0 without). ``decay`` > 0:
    the factors' spectrum falls like a trained model's (``ann_libraries.factors``);
    ``ivf_lists`` not None: an IVF index instead of the HNSW graph (0 lists: the default);
    ``scann_leaves`` not None: a ScaNN index (0 leaves: the default)."""
    rng = np.random.default_rng(seed)
    items = factors(rng, n_items, decay)
    users = factors(rng, N_USERS, decay)
    if categories:  # items and users around category centres (bench/worker/ivf.py's catalog)
        shape = argparse.Namespace(
            catalog="clustered",
            decay=decay,
            categories=categories,
            spread=0.3,
            queries=N_USERS // 2,
        )
        items, users = ivf_catalog(shape, n_items)
    arrays = ModelArrays(
        item_ids=[f"i{n}" for n in range(n_items)],
        user_ids=[f"u{n}" for n in range(N_USERS)],
        item_factors=items,
        user_factors=users,
        popular_items=[f"i{n}" for n in range(200)],
        popular_scores=[float(200 - n) for n in range(200)],
    )
    built_s = 0.0
    if index is not None:
        started = time.perf_counter()
        arrays = ModelArrays(
            **{
                f: getattr(arrays, f) for f in ModelArrays.__dataclass_fields__ if f != "item_index"
            },
            item_index=ItemIndex.build(items, index, users=users),
        )
        built_s = time.perf_counter() - started
        print(f"index of {n_items} items built in {built_s:.1f} s", flush=True)
    if ivf_lists is not None:
        started = time.perf_counter()
        # With its recall curve on the model's queries, as the trainer builds it.
        queries = model_queries(users, items)
        arrays = replace(arrays, item_ivf=IvfIndex.build(items, lists=ivf_lists, queries=queries))
        built_s = time.perf_counter() - started
        print(f"IVF index of {n_items} items built in {built_s:.1f} s", flush=True)
    if scann_leaves is not None:
        started = time.perf_counter()
        queries = model_queries(users, items)
        built = ScannIndex.build(items, leaves=scann_leaves, queries=queries)
        arrays = replace(arrays, item_scann=built)
        built_s = time.perf_counter() - started
        print(f"ScaNN index of {n_items} items built in {built_s:.1f} s: {built.recall.tolist()}")
    uri = write_artifact(
        open_store(root.as_uri()),
        model_name="bench",
        version=f"n{n_items}",
        arrays=arrays,
        created_at=datetime.now(UTC),
        data_snapshot="bench",
        params={"dim": DIM},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
    )
    return uri, built_s


def index_figures(uri: str, workdir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Model load (empty cache, then verified) and recall@100 of the indexed lists against the
    exact ones, on the real-time policy's queries, in this process; per search expansion of
    ``--recall-expansions`` too (the served one is ``--ann-expansion``)."""
    loads, models = [], []
    partitioned = args.ivf or args.scann
    served, others = (
        (args.ann_probes, args.recall_probes)
        if partitioned
        else (args.ann_expansion, args.recall_expansions)
    )
    for setting in [served, served, *others]:
        use = IndexUse(
            min_items=0,
            expansion=args.ann_expansion if partitioned else setting,
            max_fetch=args.ann_max_fetch,
            probes=setting if partitioned else args.ann_probes,
            recall=args.ann_recall,
        )
        started = time.perf_counter()
        models.append(
            load_serving_model(uri, s3=S3Settings(), cache_dir=workdir / "load", index_use=use)
        )
        loads.append(time.perf_counter() - started)
    model = models[0]
    exact = ServingModel(
        name=model.name,
        version=model.version,
        uri=uri,
        arrays=ModelArrays(
            item_ids=list(model.item_ids),
            user_ids=[f"u{n}" for n in range(N_USERS)],
            item_factors=model.items,
            user_factors=model.users,
            popular_items=model.popular_items,
            popular_scores=model.popular_scores,
        ),
        index_use=IndexUse(min_items=10**12),
    )
    histories = recall_histories(len(model.item_ids), args.recall_queries)
    policy = Policy(top_n=100)
    # As the worker scores (RECO_WORKER_BLAS_THREADS=1): a second BLAS thread's spinning
    # counted as CPU here would make the exact scan look twice as costly.
    with threadpool_limits(limits=args.blas_threads):
        truth, exact_ms = timed_lists(exact, histories, policy)
    figures = {
        "model_load_empty_cache_s": loads[0],
        "model_load_verified_s": loads[1],
        "exact_cpu_ms_per_user": exact_ms,
    }
    for i, (setting, indexed) in enumerate(zip([served, *others], models[1:], strict=True)):
        with threadpool_limits(limits=args.blas_threads):
            lists, indexed_ms = timed_lists(indexed, histories, policy)
        hits = sum(len(set(a.items) & set(b.items)) for a, b in zip(lists, truth, strict=True))
        suffix = (f"_p{setting}" if partitioned else f"_ef{setting}") if i else ""
        figures[f"recall_at_100{suffix}"] = hits / sum(len(b.items) for b in truth)
        figures[f"indexed_cpu_ms_per_user{suffix}"] = indexed_ms
        figures[f"exact_fallbacks{suffix}"] = indexed.selector.exact_fallbacks
        figures[f"probes{suffix}"] = indexed.selector.probes
    print(json.dumps(figures), flush=True)
    return figures


def timed_lists(
    model: ServingModel, histories: Histories, policy: Policy
) -> tuple[list[Ranked], float]:
    """The policy's lists, and the CPU milliseconds they took per user (batches of 500)."""
    lists: list[Ranked] = []
    cpu0 = time.process_time()
    for start in range(0, len(histories), 500):
        part = Histories.of(
            [
                (u, histories.entries_of(start + j))
                for j, u in enumerate(histories.user_ids[start : start + 500])
            ]
        )
        lists.extend(score(model, part, policy))
    return lists, (time.process_time() - cpu0) / len(histories) * 1000


def recall_histories(n_items: int, n: int) -> Histories:
    """Half known, half cold users, each with 1-5 recent views (excluded from their lists)."""
    rng = np.random.default_rng(7)
    now = time.time()
    return Histories.of(
        [
            (
                f"u{user}",
                [
                    HistoryEntry("", f"i{item}", ActionType.VIEW, None, now - 60 * age)
                    for age, item in enumerate(rng.integers(0, n_items, rng.integers(1, 6)))
                ],
            )
            for user in rng.integers(0, 2 * N_USERS, n)
        ]
    )


class Events:
    """Random actions: users from twice the model's users (half cold), uniform items."""

    def __init__(self, n_items: int, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._n_items = n_items
        self._n = 0

    def next(self, count: int) -> list[UserAction]:
        users = self._rng.integers(0, 2 * N_USERS, count)
        items = self._rng.integers(0, self._n_items, count)
        now = datetime.now(UTC)
        out = []
        for user, item in zip(users.tolist(), items.tolist(), strict=True):
            self._n += 1
            out.append(
                UserAction(
                    event_id=f"b{self._n}",
                    user_id=f"u{user}",
                    item_id=f"i{item}",
                    action=ACTIONS[self._n % len(ACTIONS)],
                    ts=now,
                )
            )
        return out


async def start_worker(
    uri: str,
    prefix: str,
    *,
    port: int,
    cache_dir: Path,
    log: Path,
    blas_threads: int = 1,
    env: Mapping[str, str] | None = None,
    command: Path | None = None,
) -> asyncio.subprocess.Process:
    """One ``reco-worker`` process on the dev stack, with its topics and keys under ``prefix``,
    its output in ``log`` and ``env`` added to its environment; ``command``: another
    checkout's ``reco-worker`` (default: this environment's)."""
    env = {
        **os.environ,
        **(env or {}),
        MODEL_URI_ENV: uri,
        "RECO_KAFKA_TOPIC_PREFIX": prefix,
        "RECO_REDIS_KEY_PREFIX": prefix.rstrip("-"),
        "RECO_WORKER_HTTP_HOST": "127.0.0.1",
        "RECO_WORKER_HTTP_PORT": str(port),
        "RECO_WORKER_CACHE_DIR": str(cache_dir),
        "RECO_WORKER_BLAS_THREADS": str(blas_threads),
        "RECO_LOG_LEVEL": os.environ.get("RECO_LOG_LEVEL", "INFO"),
    }
    command = command or Path(sys.executable).with_name("reco-worker")
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(str(command), env=env, stdout=out, stderr=out)


async def send(producer: AIOKafkaProducer, topic: str, events: list[UserAction]) -> None:
    futures = [await producer.send(topic, encode(e), key=e.user_id.encode()) for e in events]
    await asyncio.gather(*futures)


async def produce_at(
    producer: AIOKafkaProducer,
    topic: str,
    events: Events,
    rate: float,
    *,
    duration: float = math.inf,
    stop: asyncio.Event | None = None,
) -> int:
    """Produce ``rate`` events/s (stamped when sent) for ``duration`` s or until ``stop`` is
    set; returns how many were sent."""
    sent = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < duration and not (stop and stop.is_set()):
        due = int(elapsed * rate) - sent
        if due > 0:
            await send(producer, topic, events.next(due))
            sent += due
        await asyncio.sleep(0.01)
    return sent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    def __init__(self, port: int) -> None:
        self._http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5)

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        text = (await self._http.get("/metrics")).text
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((sample.labels, sample.value))
        return out

    async def close(self) -> None:
        await self._http.aclose()


def value(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in metrics.get(name, []))


def buckets(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str
) -> list[tuple[float, float]]:
    pairs = [(float(labels["le"]), v) for labels, v in metrics.get(f"{name}_bucket", [])]
    return sorted(pairs)


def between(
    before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> list[tuple[float, float]]:
    """Cumulative bucket counts of what was observed between two snapshots."""
    return [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]


def quantile(
    q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> float:
    """``histogram_quantile`` over the difference of two cumulative bucket snapshots."""
    delta = between(before, after)
    total = delta[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in delta:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            width = count - lower_count
            share = (rank - lower_count) / width if width else 0.0
            return lower_le + (le - lower_le) * share
        lower_le, lower_count = le, count
    return lower_le


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until(condition, *, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


async def run_one(n_items: int, args: argparse.Namespace, workdir: Path) -> list[Result]:
    index = IndexParams(args.index_m, args.index_ef_add) if args.index else None
    uri, built_s = build_model(
        workdir / "store",
        n_items,
        seed=n_items,
        index=index,
        decay=args.decay,
        ivf_lists=args.ivf_lists if args.ivf else None,
        categories=args.categories,
        scann_leaves=args.ivf_lists if args.scann else None,
    )
    figures = None
    if index is not None or args.ivf or args.scann:
        figures = {"build_s": built_s, **index_figures(uri, workdir, args)}
        if args.recall_only:
            return []
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    kafka = KafkaSettings(topic_prefix=prefix)
    topic = kafka.topics.user_actions
    await ensure_topics(kafka, topic, Topics.dlq(topic))
    producer = await start_producer(kafka)
    events = Events(n_items, seed=1)
    backlog = args.backlog or (
        30_000 if n_items <= 10_000 else 10_000 if n_items <= 100_000 else 3_000
    )
    for start in range(0, backlog, 1000):
        await send(producer, topic, events.next(min(1000, backlog - start)))

    port = free_port()
    process = await start_worker(
        uri,
        prefix,
        port=port,
        cache_dir=workdir / "cache",
        log=args.output.parent / f"worker-{n_items}.log",
        blas_threads=args.blas_threads,
        env={
            "RECO_WORKER_ANN_MIN_ITEMS": str(args.ann_min_items),
            "RECO_WORKER_ANN_EXPANSION": str(args.ann_expansion),
            "RECO_WORKER_ANN_MAX_FETCH": str(args.ann_max_fetch),
            "RECO_WORKER_ANN_RECALL": str(args.ann_recall),
            **({} if args.ann_probes is None else {"RECO_WORKER_ANN_PROBES": str(args.ann_probes)}),
        },
    )
    scraper = Scraper(port)
    results: list[Result] = []
    try:
        await until(scraper.ready, timeout_s=300, what="the worker")
        events_per_s, per_cpu, mean_batch = await drain(scraper, process.pid, backlog)
        for rate in args.rates if n_items < 1_000_000 else args.rates_1m:
            window = await steady(
                scraper, producer, topic, events, rate, args.duration, trace=args.trace
            )
            results.append(
                Result(
                    n_items,
                    backlog,
                    events_per_s,
                    per_cpu,
                    mean_batch,
                    rate,
                    *window,
                    figures,
                    args.decay,
                )
            )
            print(json.dumps(asdict(results[-1])), flush=True)
    finally:
        await scraper.close()
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=60)
        await producer.stop()
    return results


async def drain(scraper: Scraper, pid: int, backlog: int) -> tuple[float, float, float]:
    """Events/s while the backlog drains, between the first and the last scrape with progress."""
    samples: list[tuple[float, float, float]] = []
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        metrics = await scraper.metrics()
        done = value(metrics, "reco_worker_events_consumed_total")
        samples.append((time.monotonic(), done, cpu_seconds(pid)))
        if done >= backlog:
            break
        await asyncio.sleep(1.0)  # Prometheus scrapes far less often; keep the probe light
    moving = [s for s in samples if 0 < s[1] < backlog] or samples
    first, last = moving[0], samples[-1]
    elapsed = last[0] - first[0]
    events = last[1] - first[1]
    cpu = last[2] - first[2]
    batches = value(metrics, "reco_worker_batch_size_records_count")
    recompute = value(metrics, "reco_worker_recompute_seconds_sum")
    per_batch = buckets(metrics, "reco_worker_recompute_seconds")
    print(f"scoring time per batch, cumulative buckets: {per_batch}", flush=True)
    print(
        f"drain: {events:.0f} events in {elapsed:.1f} s, {batches:.0f} batches, "
        f"scoring {recompute:.1f} s, worker CPU {cpu:.1f} s",
        flush=True,
    )
    return events / elapsed, events / cpu if cpu else float("nan"), backlog / max(batches, 1)


async def steady(
    scraper: Scraper,
    producer: AIOKafkaProducer,
    topic: str,
    events: Events,
    rate: int,
    duration: float,
    trace: bool = False,
) -> tuple[int, float, float, float, float, float]:
    """Produce ``rate`` events/s for ``duration`` s; freshness quantiles over that window
    (``trace``: and, every second, how many events were written more than 50 ms after their
    time, with that second's largest batch scoring time, to place a tail in time)."""
    first = await scraper.metrics()
    before = buckets(first, "reco_worker_freshness_seconds")
    consumed = value(first, "reco_worker_events_consumed_total")
    started = time.monotonic()
    tracing = asyncio.create_task(trace_tail(scraper, started)) if trace else None
    sent = await produce_at(producer, topic, events, rate, duration=duration)
    if tracing is not None:
        tracing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tracing

    async def drained() -> bool:
        metrics = await scraper.metrics()
        return value(metrics, "reco_worker_events_consumed_total") >= consumed + sent

    await until(drained, timeout_s=1800, what="the steady window to drain")
    elapsed = time.monotonic() - started
    last = await scraper.metrics()
    after = buckets(last, "reco_worker_freshness_seconds")
    if trace:
        window = between(before, after)
        print(f"trace window {elapsed:.1f} s, cumulative freshness buckets: {window}", flush=True)

    def delta(name: str) -> float:
        return value(last, name) - value(first, name)

    batches = delta("reco_worker_batch_size_records_count")
    recompute = delta("reco_worker_recompute_seconds_sum")
    return (
        sent,
        quantile(0.5, before, after) * 1000,
        quantile(0.99, before, after) * 1000,
        delta("reco_worker_batch_size_records_sum") / max(batches, 1),
        recompute / max(batches, 1) * 1000,
        recompute / elapsed,
    )


async def trace_tail(scraper: Scraper, started: float) -> None:
    """Once a second: the events written in it more than 50 ms after their time, and the
    largest scoring-time bucket any of its batches reached."""
    previous = await scraper.metrics()
    while True:
        await asyncio.sleep(1.0)
        current = await scraper.metrics()
        fresh = between(
            buckets(previous, "reco_worker_freshness_seconds"),
            buckets(current, "reco_worker_freshness_seconds"),
        )
        scored = between(
            buckets(previous, "reco_worker_recompute_seconds"),
            buckets(current, "reco_worker_recompute_seconds"),
        )
        slowest = min((le for le, c in scored if c >= scored[-1][1] > 0), default=0.0)
        total = fresh[-1][1]
        within = max((c for le, c in fresh if le <= 0.05), default=0.0)
        print(
            f"trace t={time.monotonic() - started:5.1f}s events {total:5.0f} "
            f"over 50 ms {total - within:4.0f}  slowest scoring <= {slowest} s",
            flush=True,
        )
        previous = current


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rates", type=int, nargs="+", default=[1000])
    parser.add_argument("--rates-1m", type=int, nargs="+", default=[1000, 200])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=0, help="default: by catalog size")
    parser.add_argument("--blas-threads", type=int, default=1)
    parser.add_argument(
        "--decay", type=float, default=0.0, help="spectrum decay of the model (0: isotropic)"
    )
    parser.add_argument(
        "--categories", type=int, default=0, help="items around this many centres (0: none)"
    )
    parser.add_argument("--index", action="store_true", help="build the artifact's index")
    parser.add_argument("--index-m", type=int, default=32, help="the index's connectivity")
    parser.add_argument("--index-ef-add", type=int, default=200, help="its build expansion")
    parser.add_argument("--ivf", action="store_true", help="an IVF index instead of HNSW")
    parser.add_argument("--scann", action="store_true", help="a ScaNN index instead of HNSW")
    parser.add_argument(
        "--ivf-lists", type=int, default=0, help="IVF lists or ScaNN leaves (0: ~sqrt(items))"
    )
    parser.add_argument(
        "--ann-probes", type=int, default=None, help="lists probed (default: by --ann-recall)"
    )
    parser.add_argument("--ann-recall", type=float, default=IndexUse().recall)
    parser.add_argument("--recall-probes", type=int, nargs="*", default=[])
    parser.add_argument("--ann-min-items", type=int, default=IndexUse().min_items)
    parser.add_argument("--ann-expansion", type=int, default=IndexUse().expansion)
    parser.add_argument("--ann-max-fetch", type=int, default=IndexUse().max_fetch)
    parser.add_argument("--recall-queries", type=int, default=500)
    parser.add_argument("--recall-only", action="store_true", help="no worker run")
    parser.add_argument(
        "--recall-expansions", type=int, nargs="*", default=[], help="recall at these ef too"
    )
    parser.add_argument(
        "--trace", action="store_true", help="per second of the steady windows: the tail"
    )
    parser.add_argument("--output", type=Path, default=Path("var/bench/worker-throughput.json"))
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="reco-bench-worker-") as tmp:
        for n_items in args.items:
            results.extend(await run_one(n_items, args, Path(tmp)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(
        "\n| items | events/s (backlog) | events/CPU-s | rate/s | freshness p50 ms | p99 ms "
        "| batch at that rate | scoring ms/batch |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.items:,} | {r.events_per_s:,.0f} | {r.events_per_cpu_s:,.0f} | {r.rate:,} "
            f"| {r.freshness_p50_ms:.1f} | {r.freshness_p99_ms:.1f} | {r.steady_mean_batch:.1f} "
            f"| {r.steady_recompute_ms:.1f} |"
        )
    indexed = [r for r in results if r.index]
    if indexed:
        print(
            "\n| items | index build s | load s (empty / verified) | lists probed | recall@100 "
            "| CPU ms per user, indexed / exact |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
    for r in indexed:
        f = r.index or {}
        print(
            f"| {r.items:,} | {f['build_s']:.1f} | {f['model_load_empty_cache_s']:.2f} / "
            f"{f['model_load_verified_s']:.2f} | {f.get('probes', 0):.0f} "
            f"| {f['recall_at_100']:.4f} "
            f"| {f['indexed_cpu_ms_per_user']:.2f} / {f['exact_cpu_ms_per_user']:.2f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
