"""The dev overlay applied for real to the local control plane (kwok fakes nodes and pods):
everything becomes ready, the trainer lands on the training pool, and the controller, run as
a local process with the overlay's ServiceAccount and Role, rolls the worker Deployment to a
newly published model, which a later `kubectl apply` of the same manifests does not undo."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from deploy_kube import Kube
from deploy_manifests import Manifest, kustomize, wrapper

from reco_common.artifact import ModelArrays, announcement, write_artifact
from reco_common.contracts import (
    MODEL_URI_ENV,
    EvalMetrics,
    ModelPublished,
    ObjectLayout,
    RolloutEvent,
    decode,
)
from reco_common.kafka import ensure_topics, publish
from reco_common.settings import KafkaSettings
from reco_common.storage import ObjectStore
from reco_devkit.procs import ServiceProcess, console_script, free_port

pytestmark = pytest.mark.kube

MODEL = "shop"
WORKER = "worker-shop"
MODEL_URI_FIELD = f'k:{{"name":"{MODEL_URI_ENV}"}}'


@dataclass(frozen=True)
class Deployed:
    """The dev overlay, applied in its own namespace."""

    namespace: str
    directory: Path  # the kustomization that was applied with `kubectl apply -k`
    docs: tuple[Manifest, ...]


@pytest.fixture(scope="module")
def deployed(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    directory = wrapper(tmp_path_factory.mktemp("overlay"), overlay="dev", namespace=namespace)
    docs = tuple(kustomize(directory))
    try:
        kube.provide_volumes(docs, namespace)
        kube.run("apply", "-k", str(directory))
        yield Deployed(namespace=namespace, directory=directory, docs=docs)
    finally:
        kube.delete_namespace(namespace)


def test_every_deployment_and_the_statefulset_become_ready(kube: Kube, deployed: Deployed) -> None:
    listing = kube.wait_workloads_ready(deployed.namespace)
    ready = {(i["kind"], i["metadata"]["name"]) for i in listing["items"]}
    expected = {
        (d["kind"], d["metadata"]["name"])
        for d in deployed.docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }
    assert ready == expected
    assert ("StatefulSet", "kafka") in ready
    claims = kube.get("pvc", "-n", deployed.namespace)["items"]
    assert {c["status"]["phase"] for c in claims} == {"Bound"}


def test_a_training_runs_on_the_training_pool_and_completes(kube: Kube, deployed: Deployed) -> None:
    ns = deployed.namespace
    kube.run("create", "job", "train-now", "--from=cronjob/reco-trainer", "-n", ns)
    kube.run("wait", "--for=condition=Complete", "job/train-now", "-n", ns, "--timeout=90s")
    (pod,) = kube.get("pods", "-n", ns, "-l", "job-name=train-now")["items"]
    node = kube.get("node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["reco.dev/pool"] == "training"


@pytest.fixture
def controller_kubeconfig(kube: Kube, deployed: Deployed, tmp_path: Path) -> Path:
    """A kubeconfig holding a token of the overlay's own ServiceAccount `reco-controller`: the
    controller acts with exactly the Role the manifests grant."""
    ns = deployed.namespace
    token = kube.run("create", "token", "reco-controller", "-n", ns, "--duration=1h").strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "reco-controller", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"].update(user="reco-controller", namespace=ns)
    path = tmp_path / "controller.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture
def controller(
    deployed: Deployed,
    controller_kubeconfig: Path,
    kafka_settings: KafkaSettings,
    unique: str,
    tmp_path: Path,
) -> Iterator[ServiceProcess]:
    """`reco-controller run` as a local process against the overlay's namespace."""
    port = free_port()
    process = ServiceProcess(
        name="controller",
        argv=[console_script("reco-controller"), "run"],
        env={
            "RECO_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
            "RECO_CONTROLLER_NAMESPACE": deployed.namespace,
            "RECO_CONTROLLER_DEPLOYMENTS": _controller_env(deployed)["RECO_CONTROLLER_DEPLOYMENTS"],
            "RECO_CONTROLLER_KUBECONFIG": str(controller_kubeconfig),
            "RECO_CONTROLLER_GROUP_ID": f"controller-{unique}",
            "RECO_CONTROLLER_IDENTITY": f"test-{unique}",
            "RECO_CONTROLLER_POLL_INTERVAL_S": "0.2",
            "RECO_CONTROLLER_HEALTH_HOST": "127.0.0.1",
            "RECO_CONTROLLER_HEALTH_PORT": str(port),
        },
        log_path=tmp_path / "controller.log",
        ready_url=f"http://127.0.0.1:{port}/readyz",
    )
    process.start()
    try:
        process.wait_ready(timeout_s=60)
        yield process
    finally:
        assert process.terminate(timeout_s=30) == 0, process.tail()


def _controller_env(deployed: Deployed) -> dict[str, str]:
    (deployment,) = [
        d
        for d in deployed.docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "reco-controller"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {v["name"]: v["value"] for v in container["env"] if "value" in v}


@pytest.fixture
async def rollout_events(kafka_settings: KafkaSettings) -> AsyncIterator[AIOKafkaConsumer]:
    topics = kafka_settings.topics
    await ensure_topics(kafka_settings, topics.model_published, topics.rollout_events)
    consumer = AIOKafkaConsumer(
        topics.rollout_events,
        bootstrap_servers=kafka_settings.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


def _tiny_artifact(store: ObjectStore, version: str) -> ModelPublished:
    """A small model written to ``store`` and the trainer's event for it (pinned manifest)."""
    rng = np.random.default_rng(7)
    metrics = EvalMetrics(model={"precision@10": 0.2}, baseline={"precision@10": 0.05})
    arrays = ModelArrays(
        item_ids=["i-1", "i-2", "i-3"],
        user_ids=["u-1", "u-2"],
        item_factors=rng.normal(size=(3, 5)).astype(np.float32),
        user_factors=rng.normal(size=(2, 5)).astype(np.float32),
        popular_items=["i-2", "i-1"],
        popular_scores=[2.0, 1.0],
    )
    write_artifact(
        store,
        model_name=MODEL,
        version=version,
        arrays=arrays,
        created_at=datetime.now(UTC),
        data_snapshot="test",
        params={},
        metrics=metrics,
        library_versions={},
    )
    return announcement(store.below(ObjectLayout.model_dir(MODEL, version)))


def _worker(kube: Kube, namespace: str) -> dict[str, Any]:
    return kube.get("deployment", WORKER, "-n", namespace, "--show-managed-fields")


def _revision(deployment: dict[str, Any]) -> int:
    """The Deployment's revision: it grows by one with each new ReplicaSet (a rollout)."""
    return int(deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"])


def _model_uri(deployment: dict[str, Any]) -> str | None:
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"
    ]
    return next(
        (v.get("value") for v in container.get("env", []) if v["name"] == MODEL_URI_ENV), None
    )


async def _until_succeeded(consumer: AIOKafkaConsumer, version: str) -> list[str]:
    statuses: list[str] = []
    async with asyncio.timeout(90):
        while "succeeded" not in statuses:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                events = [decode(RolloutEvent, r.value) for r in records]
                statuses += [e.status.value for e in events if e.version == version]
            assert "failed" not in statuses, statuses
    return statuses


async def test_the_controller_rolls_the_worker_and_apply_keeps_the_model(
    kube: Kube,
    deployed: Deployed,
    controller: ServiceProcess,
    rollout_events: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    kafka_settings: KafkaSettings,
    s3_store: ObjectStore,
) -> None:
    ns = deployed.namespace
    kube.wait_workloads_ready(ns)
    assert _model_uri(_worker(kube, ns)) is None, "the manifests leave MODEL_URI to the controller"

    event = _tiny_artifact(s3_store, "v1")
    uri = event.artifact_uri
    await publish(producer, kafka_settings.topics.model_published, MODEL, event)
    assert await _until_succeeded(rollout_events, "v1") == ["started", "succeeded"]
    rolled = _worker(kube, ns)
    assert _model_uri(rolled) == uri
    assert rolled["metadata"]["annotations"]["reco.dev/model-version"] == "v1"
    kube.wait_workloads_ready(ns)

    # The controller's field manager owns MODEL_URI; kubectl owns none of it.
    owners = [
        m["manager"] for m in rolled["metadata"]["managedFields"] if MODEL_URI_FIELD in str(m)
    ]
    assert owners, "MODEL_URI has a field manager"
    assert not any(o.startswith("kubectl") for o in owners), owners

    # The same manifests again, client-side, then server-side (taking over, with
    # --force-conflicts, every field the manifests name: MODEL_URI is not one): nothing changes.
    kube.run("apply", "-k", str(deployed.directory))
    kube.run("apply", "--server-side", "--force-conflicts", "-k", str(deployed.directory))
    again = _worker(kube, ns)
    assert _model_uri(again) == uri
    assert again["spec"]["template"] == rolled["spec"]["template"]
    assert _revision(again) == _revision(rolled), "no rollout"
    assert again["metadata"]["annotations"]["reco.dev/model-version"] == "v1"

    # A real change of the worker's template (a new setting): a rollout, with the model kept.
    changed = _with_worker_env(deployed.docs, "RECO_LOG_LEVEL", "DEBUG")
    kube.run("apply", "-f", "-", stdin=yaml.safe_dump(changed))
    kube.wait_workloads_ready(ns)
    updated = _worker(kube, ns)
    assert _revision(updated) == _revision(rolled) + 1, "one rollout, to the new template"
    assert _model_uri(updated) == uri
    assert controller.running()


def _with_worker_env(docs: tuple[Manifest, ...], name: str, value: str) -> Manifest:
    (worker,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == WORKER]
    worker = yaml.safe_load(yaml.safe_dump(worker))  # a copy: the module's docs stay as applied
    for container in worker["spec"]["template"]["spec"]["containers"]:
        if container["name"] == "worker":
            container["env"].append({"name": name, "value": value})
    return worker
