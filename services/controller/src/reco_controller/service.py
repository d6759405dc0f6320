"""The controller role: connect, win the lease, consume ``model-published`` while leading, and
keep each model's ``active`` record in line with its target (:mod:`reco_controller.activation`).

Only the leader is a member of the consumer group, so only it acts. When leadership is lost the
batch in hand is abandoned uncommitted (the next leader gets it again and, the target's state
being the memory, resumes rather than repeats); on SIGTERM the same happens and the lease is
released, so that a follower takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from kubernetes_asyncio.client import ApiClient

from reco_common.contracts import RolloutEvent, Topics
from reco_common.kafka import ensure_topics, publish, start_producer
from reco_common.ops import OpsServer, Readiness, ops_app
from reco_common.redis_store import ModelRecords, connect
from reco_controller.activation import Activations
from reco_controller.consumer import model_published_consumer
from reco_controller.gate import GatePolicy
from reco_controller.kube import api_client
from reco_controller.leader import AlwaysLeader, LeaseElector
from reco_controller.manifests import StoredManifests, StoredPopular
from reco_controller.metrics import ControllerMetrics
from reco_controller.rollout import Leading, Rollouts
from reco_controller.settings import Settings, TargetKind
from reco_controller.targets.base import TargetResolver
from reco_controller.targets.kubernetes import KubernetesTargets
from reco_controller.targets.local import LocalTargets, worker_http

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    """The connected pieces; closed by the exit stack they were opened on."""

    rollouts: Rollouts
    activations: Activations
    targets: TargetResolver
    producer: AIOKafkaProducer
    kube: ApiClient | None


async def open_runtime(
    settings: Settings, stack: contextlib.AsyncExitStack, *, leading: Leading
) -> Runtime:
    """Connect to Kafka and to the target (Kubernetes API or workers) and build the rollouts;
    ``leading`` is asked before every write."""
    producer = await start_producer(settings.kafka)
    stack.push_async_callback(producer.stop)
    redis = connect(settings.redis)
    stack.push_async_callback(redis.aclose)
    records = ModelRecords(redis, settings.redis.keys)
    metrics = ControllerMetrics.create()
    activations = Activations(records=records, popular=StoredPopular(settings.s3), metrics=metrics)
    conf = settings.controller
    kube: ApiClient | None = None
    targets: TargetResolver
    if conf.target is TargetKind.KUBERNETES:
        kube = await api_client(kubeconfig=conf.kubeconfig)
        stack.push_async_callback(kube.close)
        targets = KubernetesTargets(api=kube, settings=conf)
    else:
        http = worker_http(conf)
        stack.push_async_callback(http.aclose)
        targets = LocalTargets(http=http, settings=conf, s3=settings.s3, records=records)
    topic = settings.kafka.topics.rollout_events

    async def report(event: RolloutEvent) -> None:
        await publish(producer, topic, event.model_name, event)

    rollouts = Rollouts(
        targets=targets,
        report=report,
        gate=GatePolicy(
            max_regression=conf.max_regression,
            baseline_margin=conf.baseline_margin,
            metrics=tuple(conf.gate_metrics),
        ),
        timeout_s=conf.rollout_timeout_s,
        metrics=metrics,
        manifests=StoredManifests(settings.s3),
        max_clock_skew_s=conf.max_clock_skew_s,
        leading=leading,
        activations=activations,
    )
    return Runtime(
        rollouts=rollouts, activations=activations, targets=targets, producer=producer, kube=kube
    )


class Controller:
    """The ``reco-controller run`` role (see :func:`reco_common.lifecycle.serve`)."""

    def __init__(self, *, settings: Settings) -> None:
        self._settings = settings
        self._metrics = ControllerMetrics.create()
        self._stack = contextlib.AsyncExitStack()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._connected = asyncio.Event()
        self._runtime: Runtime | None = None
        self._elector: LeaseElector | AlwaysLeader = AlwaysLeader()

    async def start(self) -> None:
        conf = self._settings.controller
        topics = self._settings.kafka.topics
        try:
            await ensure_topics(
                self._settings.kafka,
                topics.model_published,
                Topics.dlq(topics.model_published),
                topics.rollout_events,
            )
            # Late-bound: the elector is built below, once the API client exists.
            self._runtime = await open_runtime(
                self._settings, self._stack, leading=lambda: self._elector.still_leading()
            )
            if self._runtime.kube is not None:
                self._elector = LeaseElector(
                    api=self._runtime.kube,
                    name=conf.lease_name,
                    namespace=conf.lease_ns,
                    identity=conf.identity,
                    lease_duration_s=conf.lease_duration_s,
                    renew_deadline_s=conf.renew_deadline_s,
                    retry_period_s=conf.retry_period_s,
                )
            ops = OpsServer(
                ops_app(title="reco-controller", readiness=self._readiness()),
                host=conf.health_host,
                port=conf.health_port,
            )
            await ops.start()
            self._stack.push_async_callback(ops.stop)
        except BaseException:
            await self._stack.aclose()
            raise
        self._connected.set()
        logger.info("controller %s started (target %s)", self._elector.identity, conf.target.value)

    async def run(self) -> None:
        try:
            while await self._elector.acquire(self._stopping):
                await self._lead()
        finally:
            await asyncio.shield(self._elector.release())
            self._finished.set()

    async def stop(self) -> None:
        """Abandon the batch in hand (uncommitted), release the lease, close every connection."""
        self._connected.clear()
        self._stopping.set()
        await self._finished.wait()
        await self._stack.aclose()
        logger.info("controller %s stopped", self._elector.identity)

    def _readiness(self) -> Readiness:
        """Ready once connected to Kafka and the target, leader or not: a follower is ready to
        take over. Leadership is reported beside it, without gating readiness."""

        async def leading() -> bool:
            return self._elector.leading

        readiness = Readiness()
        readiness.add("connected", self._connected)
        readiness.add("leader", leading, required=False)
        return readiness

    async def _lead(self) -> None:
        assert self._runtime is not None, "start() first"
        consumer = model_published_consumer(
            settings=self._settings.kafka,
            group_id=self._settings.controller.group_id,
            rollouts=self._runtime.rollouts,
            producer=self._runtime.producer,
        )
        await consumer.start()
        self._metrics.leader.set(1)
        self._metrics.leadership_changes.labels("acquired").inc()
        work = asyncio.create_task(consumer.run(self._stopping), name="consume")
        hold = asyncio.create_task(self._elector.hold(self._stopping), name="hold-lease")
        keep = asyncio.create_task(self._keep_active_records(), name="keep-active-records")
        try:
            await asyncio.wait({work, hold}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, hold, keep):
                task.cancel()
            await asyncio.gather(work, hold, keep, return_exceptions=True)
            await asyncio.shield(consumer.stop())
            self._metrics.leader.set(0)
            self._metrics.leadership_changes.labels("lost").inc()
        if not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]

    async def _keep_active_records(self) -> None:
        assert self._runtime is not None, "start() first"
        await self._runtime.activations.keep(
            self._runtime.targets,
            leading=self._elector.still_leading,
            interval_s=self._settings.controller.activation_check_s,
            stop=self._stopping,
        )
