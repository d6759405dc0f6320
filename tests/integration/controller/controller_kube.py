"""Helpers of the controller's integration tests: the control plane, the worker, the events."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoordinationV1Api, CoreV1Api, V1Lease
from kubernetes_asyncio.client.exceptions import ApiException

from reco_common.artifact import ModelArrays, announcement, write_artifact
from reco_common.contracts import (
    MODEL_MANIFEST_SHA256_ENV,
    MODEL_URI_ENV,
    EvalMetrics,
    ModelPublished,
    ModelRef,
    ObjectLayout,
    RolloutEvent,
    decode,
)
from reco_common.storage import open_store
from reco_controller.settings import Settings
from reco_controller.targets.deployment import ACTIVE, Deployment, record_annotations
from reco_controller.targets.rollout_status import rollout_progress

REPO = Path(__file__).resolve().parents[3]
KUBE_SH = REPO / "scripts" / "kube.sh"
RBAC = REPO / "deploy" / "k8s" / "base" / "controller"
WORKER = "worker-shop"  # the Deployment that deploy/k8s/base/controller/role.yaml names
MODEL = "shop"
GOOD = EvalMetrics(model={"precision@10": 0.20}, baseline={"precision@10": 0.05})
BETTER = EvalMetrics(model={"precision@10": 0.22}, baseline={"precision@10": 0.05})
WORSE = EvalMetrics(model={"precision@10": 0.10}, baseline={"precision@10": 0.05})
T0 = datetime(2026, 11, 1, tzinfo=UTC)


# Where the tests' artifacts are: the controller reads each candidate's manifest. Set per test
# (the ``artifacts`` fixture), so that one version name holds one artifact within a test.
ARTIFACTS = Path("/nonexistent")


def uri(version: str) -> str:
    return (ARTIFACTS / ObjectLayout.model_dir(MODEL, version)).as_uri()


def write_model(root: Path, version: str, *, metrics: EvalMetrics, created_at: datetime) -> str:
    """A tiny artifact under ``root`` (unless that version is there); returns its URI."""
    store = open_store(root.as_uri())
    if store.exists(f"{ObjectLayout.model_dir(MODEL, version)}/{ObjectLayout.MANIFEST}"):
        return store.uri(ObjectLayout.model_dir(MODEL, version))
    rng = np.random.default_rng(0)
    arrays = ModelArrays(
        item_ids=["i0", "i1"],
        user_ids=["u0"],
        item_factors=rng.normal(size=(2, 3)).astype(np.float32),
        user_factors=rng.normal(size=(1, 3)).astype(np.float32),
        popular_items=["i1"],
        popular_scores=[1.0],
    )
    return write_artifact(
        store,
        model_name=MODEL,
        version=version,
        arrays=arrays,
        created_at=created_at,
        data_snapshot="snap",
        params={},
        metrics=metrics,
        library_versions={},
    )


def published(version: str, *, metrics: EvalMetrics = BETTER, hours: int = 1) -> ModelPublished:
    """The trainer's event for a model written now under :data:`ARTIFACTS`."""
    location = write_model(
        ARTIFACTS, version, metrics=metrics, created_at=T0 + timedelta(hours=hours)
    )
    return announcement(open_store(location))


@dataclass(frozen=True)
class Kube:
    """The local control plane: its admin kubeconfig and kubectl."""

    kubeconfig: Path
    kubectl: Path

    def run(self, *args: str, ok: tuple[int, ...] = (0,)) -> str:
        done = subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode in ok, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()


def worker_deployment(*, progress_deadline_s: int = 600) -> dict[str, Any]:
    """The worker Deployment serving v1 (known metrics, its artifact written, its pin
    recorded), two replicas on kwok's general node."""
    write_model(ARTIFACTS, "v1", metrics=GOOD, created_at=T0)
    pin = announcement(open_store(uri("v1"))).manifest_sha256
    active = ModelRef(
        uri=uri("v1"),
        version="v1",
        metrics=GOOD,
        created_at=T0,
        manifest_sha256=pin if isinstance(pin, str) else None,
    )
    labels = {"app.kubernetes.io/name": WORKER}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": WORKER, "annotations": record_annotations(ACTIVE, active)},
        "spec": {
            "replicas": 2,
            "progressDeadlineSeconds": progress_deadline_s,
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"type": "kwok", "reco.dev/pool": "general"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                    "containers": [
                        {
                            "name": "worker",
                            "image": "reco-worker:test",
                            "env": [
                                {"name": "RECO_LOG_JSON", "value": "true"},
                                {"name": MODEL_URI_ENV, "value": uri("v1")},
                                {
                                    "name": MODEL_MANIFEST_SHA256_ENV,
                                    "value": active.manifest_sha256,
                                },
                                {"name": "RECO_KAFKA_BOOTSTRAP", "value": "kafka:9092"},
                            ],
                        }
                    ],
                },
            },
        },
    }


async def exhaust_pod_quota(admin: ApiClient, namespace: str) -> None:
    """The namespace's pod quota, exhausted by the two running workers: no new pod can be
    created, so a new ReplicaSet never becomes ready (until the quota is deleted)."""
    quota = {"metadata": {"name": "pods"}, "spec": {"hard": {"pods": "2"}}}
    core = CoreV1Api(admin)
    await core.create_namespaced_resource_quota(namespace, quota)
    async with asyncio.timeout(30):
        while not (await core.read_namespaced_resource_quota("pods", namespace)).status.hard:
            await asyncio.sleep(0.1)


async def lift_pod_quota(admin: ApiClient, namespace: str) -> None:
    """Delete the quota, then touch the worker's ReplicaSets. Kubernetes' ReplicaSet controller
    retries a refused pod creation with exponential backoff (up to 1,000 s), which a quota held
    for minutes on a loaded machine grows past any test bound; a ReplicaSet update is
    synced at once, as it would be after an operator's ``kubectl annotate``."""
    await CoreV1Api(admin).delete_namespaced_resource_quota("pods", namespace)
    apps = AppsV1Api(admin)
    found = await apps.list_namespaced_replica_set(
        namespace, label_selector=f"app.kubernetes.io/name={WORKER}"
    )
    now = datetime.now(UTC).isoformat()
    for replica_set in found.items:
        patch = {"metadata": {"annotations": {"reco.test/quota-lifted": now}}}
        await apps.patch_namespaced_replica_set(replica_set.metadata.name, namespace, patch)


async def read_worker(admin: ApiClient, namespace: str) -> Deployment:
    found = await AppsV1Api(admin).read_namespaced_deployment(WORKER, namespace)
    return Deployment.parse(admin.sanitize_for_serialization(found))


async def settled(admin: ApiClient, namespace: str, *, timeout_s: float = 60) -> Deployment:
    """The worker Deployment once its rollout is complete (bounded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            deployment = await read_worker(admin, namespace)
            if rollout_progress(deployment).done:
                return deployment
            await asyncio.sleep(0.2)


def model_uri_of(deployment: Deployment) -> str | None:
    return deployment.container("worker").env_value(MODEL_URI_ENV)


class RolloutLog:
    """Everything the controller published to ``rollout-events``, read as it arrives."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        self.events: list[RolloutEvent] = []

    def statuses(self, version: str) -> list[str]:
        return [e.status.value for e in self.events if e.version == version]

    def reason(self, version: str) -> str:
        """The reason of the last event about ``version``."""
        return [e.reason for e in self.events if e.version == version][-1]

    async def until(self, done: Callable[[RolloutLog], bool], *, timeout_s: float = 60) -> None:
        async with asyncio.timeout(timeout_s):
            while not done(self):
                batches = await self._consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    self.events.extend(decode(RolloutEvent, r.value) for r in records)

    async def reaches(self, version: str, status: str, *, timeout_s: float = 60) -> None:
        await self.until(lambda log: status in log.statuses(version), timeout_s=timeout_s)


# --------------------------------------------------------------------------- processes


def controller_env(settings: Settings, identity: str, **extra: str) -> dict[str, str]:
    """What ``reco-controller run`` gets as the process ``identity`` (``extra``: more
    ``RECO_CONTROLLER_*`` by lower-case name)."""
    conf = settings.controller
    return {
        **os.environ,
        "RECO_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "RECO_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RECO_REDIS_URL": settings.redis.url,
        "RECO_REDIS_KEY_PREFIX": settings.redis.key_prefix,
        "RECO_CONTROLLER_NAMESPACE": conf.namespace,
        "RECO_CONTROLLER_DEPLOYMENTS": f'{{"{MODEL}": "{WORKER}"}}',
        "RECO_CONTROLLER_KUBECONFIG": str(conf.kubeconfig),
        "RECO_CONTROLLER_GROUP_ID": conf.group_id,
        "RECO_CONTROLLER_IDENTITY": identity,
        "RECO_CONTROLLER_POLL_INTERVAL_S": "0.2",
        "RECO_CONTROLLER_ACTIVATION_CHECK_S": "0.5",
        "RECO_CONTROLLER_LEASE_DURATION_S": "4",
        "RECO_CONTROLLER_RENEW_DEADLINE_S": "3",
        "RECO_CONTROLLER_RETRY_PERIOD_S": "0.5",
        "RECO_CONTROLLER_HEALTH_HOST": "127.0.0.1",
        "RECO_CONTROLLER_HEALTH_PORT": "0",
    } | {f"RECO_CONTROLLER_{name.upper()}": value for name, value in extra.items()}


@asynccontextmanager
async def controllers(
    settings: Settings, logs: Path, *identities: str, **extra: str
) -> AsyncIterator[dict[str, asyncio.subprocess.Process]]:
    """``reco-controller run`` once per identity, each logging to ``logs/<identity>.log``
    (appended to: a process started again under the same identity continues its log)."""
    procs = {}
    try:
        for identity in identities:
            with (logs / f"{identity}.log").open("ab") as log:
                procs[identity] = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "reco_controller",
                    "run",
                    env=controller_env(settings, identity, **extra),
                    stdout=log,
                    stderr=log,
                )
        yield procs
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def read_lease(admin: ApiClient, namespace: str) -> V1Lease:
    return await CoordinationV1Api(admin).read_namespaced_lease("reco-controller", namespace)


async def lease_holder(
    admin: ApiClient, namespace: str, among: set[str], *, timeout_s: float = 60
) -> str:
    """The Lease's holder once it is one of ``among`` (bounded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                holder = (await read_lease(admin, namespace)).spec.holder_identity
            except ApiException as exc:
                if exc.status != 404:  # 404: not created yet
                    raise
                holder = None
            if holder in among:
                return str(holder)
            await asyncio.sleep(0.2)
