"""Controller benchmark: from a ``model-published`` event on Kafka to the patch, and to the rollout.

    uv run python bench/controller/rollout_latency.py [--rounds 20] [--replicas 2]

Needs the dev stack's Kafka (scripts/stack.sh up) and the local control plane
(scripts/kube.sh up). In a fresh namespace it creates a worker Deployment on kwok's fake node
(``--replicas``, maxSurge 1, maxUnavailable 0) serving v0, starts ``reco-controller run`` as a
real process (admin kubeconfig, default timings), then, one round at a time, publishes v1, v2,
... (each passing the gate) and records, on the clock of this process:

- ``t_send``: just before the producer sends the event (send_and_wait returns on the ack);
- ``patch``: the watch on the Deployment first shows the new generation (the patch applied);
- ``complete``: the watch shows that generation rolled out (kubectl's rollout-status rules);
- ``reported``: the controller's ``succeeded`` RolloutEvent arrives (includes its 0.5 s polls).

The watch adds its own delivery latency (a few ms), so the figures are upper bounds. Prints a
Markdown table for docs/benchmarks.md. Goal: the patch within 1 s of the message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from kubernetes_asyncio import watch
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api, V1Namespace, V1ObjectMeta

from reco_common.contracts import (
    MODEL_URI_ENV,
    EvalMetrics,
    ModelPublished,
    RolloutEvent,
    RolloutStatus,
    decode,
)
from reco_common.kafka import ensure_topics, publish, start_producer
from reco_common.settings import KafkaSettings
from reco_controller.kube import api_client
from reco_controller.targets.base import ModelRecord
from reco_controller.targets.deployment import ACTIVE, Deployment, record_annotations
from reco_controller.targets.rollout_status import rollout_progress

REPO = Path(__file__).resolve().parents[2]
MODEL, WORKER = "shop", "worker-shop"
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _uri(n: int) -> str:
    return f"s3://reco/models/{MODEL}/v{n}"


def _metrics(n: int) -> EvalMetrics:
    return EvalMetrics(model={"precision@10": 0.2 + n / 1000}, baseline={"precision@10": 0.05})


def _worker(replicas: int) -> dict[str, object]:
    labels = {"app.kubernetes.io/name": WORKER}
    active = ModelRecord(uri=_uri(0), version="v0", metrics=_metrics(0), created_at=T0)
    return {
        "metadata": {"name": WORKER, "annotations": record_annotations(ACTIVE, active)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"type": "kwok", "reco.dev/pool": "general"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "worker",
                            "image": "reco-worker:bench",
                            "env": [{"name": MODEL_URI_ENV, "value": _uri(0)}],
                        }
                    ],
                },
            },
        },
    }


@dataclass
class Observations:
    """(time, generation, rolled out) of every watch event on the worker Deployment."""

    seen: list[tuple[float, int, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def first(self, generation: int, *, done: bool) -> float | None:
        return next((t for t, g, d in self.seen if g >= generation and (d or not done)), None)

    async def wait_for(self, generation: int, *, done: bool) -> float:
        async with asyncio.timeout(120):
            while (t := self.first(generation, done=done)) is None:
                self.changed.clear()
                await self.changed.wait()
        return t


async def _watch(api: ApiClient, namespace: str, into: Observations) -> None:
    apps = AppsV1Api(api)
    while True:  # a watch ends after its server-side timeout: open the next one
        async with watch.Watch().stream(
            apps.list_namespaced_deployment,
            namespace,
            field_selector=f"metadata.name={WORKER}",
            timeout_seconds=300,
        ) as stream:
            async for event in stream:
                now = time.monotonic()
                d = Deployment.parse(api.sanitize_for_serialization(event["object"]))
                into.seen.append((now, d.metadata.generation, rollout_progress(d).done))
                into.changed.set()


async def _succeeded(consumer: AIOKafkaConsumer, version: str) -> float:
    async with asyncio.timeout(120):
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    event = decode(RolloutEvent, record.value)
                    if event.version == version and event.status is RolloutStatus.SUCCEEDED:
                        return time.monotonic()
                    if event.status in (RolloutStatus.FAILED, RolloutStatus.REJECTED):
                        raise RuntimeError(f"{event.version} {event.status}: {event.reason}")


def _controller(
    kafka: KafkaSettings, namespace: str, kubeconfig: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RECO_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "RECO_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "RECO_CONTROLLER_NAMESPACE": namespace,
        "RECO_CONTROLLER_DEPLOYMENTS": f'{{"{MODEL}": "{WORKER}"}}',
        "RECO_CONTROLLER_KUBECONFIG": str(kubeconfig),
        "RECO_CONTROLLER_HEALTH_HOST": "127.0.0.1",
        "RECO_CONTROLLER_HEALTH_PORT": "0",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "reco_controller", "run"], env=env, stdout=out, stderr=out
        )


def _quantiles(values: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1], statistics.mean(ordered)


async def bench(*, kubeconfig: Path, rounds: int, replicas: int) -> None:
    run_id = uuid.uuid4().hex[:8]
    namespace = f"bench-controller-{run_id}"
    kafka = KafkaSettings(topic_prefix=f"bench-{run_id}-", client_id=f"bench-{run_id}")
    topics = kafka.topics
    await ensure_topics(kafka, topics.model_published, topics.rollout_events)
    api = await api_client(kubeconfig=kubeconfig)
    core, apps = CoreV1Api(api), AppsV1Api(api)
    await core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=namespace)))
    observations = Observations()
    watcher = asyncio.create_task(_watch(api, namespace, observations))
    producer = await start_producer(kafka)
    consumer = AIOKafkaConsumer(
        topics.rollout_events, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    log = Path(tempfile.mkdtemp(prefix="bench-controller-")) / "controller.log"
    controller = None
    rows: list[tuple[float, float, float]] = []
    try:
        created = await apps.create_namespaced_deployment(namespace, _worker(replicas))
        generation = created.metadata.generation
        await observations.wait_for(generation, done=True)
        controller = _controller(kafka, namespace, kubeconfig, log)
        for n in range(1, rounds + 1):
            event = ModelPublished(
                model_name=MODEL,
                version=f"v{n}",
                artifact_uri=_uri(n),
                created_at=T0 + timedelta(hours=n),
                metrics=_metrics(n),
            )
            sent = time.monotonic()
            await publish(producer, topics.model_published, MODEL, event)
            generation += 1
            patched = await observations.wait_for(generation, done=False)
            complete = await observations.wait_for(generation, done=True)
            reported = await _succeeded(consumer, f"v{n}")
            rows.append((patched - sent, complete - sent, reported - sent))
            print(
                f"round {n:3d}: patch {rows[-1][0] * 1000:7.1f} ms, complete "
                f"{rows[-1][1] * 1000:7.1f} ms, reported {rows[-1][2] * 1000:7.1f} ms",
                file=sys.stderr,
            )
    finally:
        if controller is not None:
            controller.terminate()
            controller.wait(timeout=30)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
        await core.delete_namespace(namespace)
        await api.close()
    print(f"\ncontroller log: {log}", file=sys.stderr)
    first_round, steady = rows[0], rows[1:] or rows
    print(
        f"| from the event on Kafka to ... ({len(steady)} rounds after the first) | p50 | p95 | max | mean |"
    )
    print("|---|---|---|---|---|")
    for i, what in enumerate(
        ("the patch applied", "the rollout complete", "the `succeeded` event")
    ):
        p50, p95, top, mean = _quantiles([r[i] for r in steady])
        print(
            f"| {what} | {p50 * 1000:.0f} ms | {p95 * 1000:.0f} ms | {top * 1000:.0f} ms | {mean * 1000:.0f} ms |"
        )
    print(
        f"\nFirst round (includes the consumer joining the group): patch "
        f"{first_round[0] * 1000:.0f} ms, complete {first_round[1] * 1000:.0f} ms."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    exports = subprocess.run(
        [str(REPO / "scripts" / "kube.sh"), "env"], capture_output=True, text=True, check=True
    ).stdout
    kubeconfig = Path(exports.split("KUBECONFIG=", 1)[1].split()[0])
    asyncio.run(bench(kubeconfig=kubeconfig, rounds=args.rounds, replicas=args.replicas))


if __name__ == "__main__":
    main()
