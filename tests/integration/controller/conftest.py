"""The controller against the real local control plane (scripts/kube.sh) and the real Kafka.

Every test gets its own namespace holding a worker Deployment ``worker-shop`` (on kwok's fake
nodes, so its pods become Running and Ready without a kubelet) and the controller's RBAC from
deploy/k8s/base/controller; the controller runs with that ServiceAccount's token, so the
manifests' permissions are what the tests exercise.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import controller_kube
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from controller_kube import (
    KUBE_SH,
    MODEL,
    RBAC,
    WORKER,
    Kube,
    RolloutLog,
    settled,
    worker_deployment,
)
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api, V1Namespace, V1ObjectMeta

from reco_common.contracts import ModelPublished
from reco_common.kafka import ensure_topics, publish
from reco_common.settings import KafkaSettings, RedisSettings
from reco_controller.kube import api_client
from reco_controller.service import Controller
from reco_controller.settings import ControllerSettings, Settings
from reco_controller.targets.deployment import Deployment


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/controller/" in str(item.fspath):
            item.add_marker(pytest.mark.kube)


@pytest.fixture(autouse=True)
def artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's artifact store (``controller_kube.uri``/``published`` write there)."""
    root = tmp_path / "artifacts"
    monkeypatch.setattr(controller_kube, "ARTIFACTS", root)
    return root


@pytest.fixture(scope="session")
def kube() -> Kube:
    """The local control plane, started unless it runs (binaries are built once and cached)."""
    if subprocess.run([str(KUBE_SH), "status"], capture_output=True, check=False).returncode:
        subprocess.run([str(KUBE_SH), "up"], check=True, timeout=1800)
    exports = subprocess.run(
        [str(KUBE_SH), "env"], capture_output=True, text=True, check=True
    ).stdout
    env = dict(
        line.removeprefix("export ").split("=", 1) for line in exports.splitlines() if "=" in line
    )
    return Kube(kubeconfig=Path(env["KUBECONFIG"]), kubectl=Path(env["RECO_KUBECTL"]))


@pytest.fixture(scope="session")
async def admin(kube: Kube) -> AsyncIterator[ApiClient]:
    """An API client with the control plane's admin credentials (for the tests' own doings)."""
    client = await api_client(kubeconfig=kube.kubeconfig)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def namespace(admin: ApiClient, unique: str) -> AsyncIterator[str]:
    name = f"t{unique}"
    core = CoreV1Api(admin)
    await core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        await core.delete_namespace(name)


@pytest.fixture
def controller_kubeconfig(kube: Kube, namespace: str, tmp_path: Path) -> Path:
    """A kubeconfig with the token of the controller's ServiceAccount from deploy/k8s."""
    for manifest in ("serviceaccount.yaml", "role.yaml", "rolebinding.yaml"):
        kube.run("apply", "-n", namespace, "-f", str(RBAC / manifest))
    token = kube.run("create", "token", "reco-controller", "-n", namespace, "--duration=1h")
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "reco-controller", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"].update(user="reco-controller", namespace=namespace)
    path = tmp_path / "controller.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture
def progress_deadline_s() -> int:
    """The worker's progressDeadlineSeconds; a test that wants a stuck rollout overrides it."""
    return 600


@pytest.fixture
async def worker(admin: ApiClient, namespace: str, progress_deadline_s: int) -> Deployment:
    """``worker-shop`` serving v1, rolled out."""
    body = worker_deployment(progress_deadline_s=progress_deadline_s)
    await AppsV1Api(admin).create_namespaced_deployment(namespace, body)
    return await settled(admin, namespace)


@pytest.fixture
def settings(
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    namespace: str,
    controller_kubeconfig: Path,
    unique: str,
) -> Settings:
    return Settings(
        kafka=kafka_settings,
        redis=redis_settings,
        controller=ControllerSettings(
            namespace=namespace,
            deployments={MODEL: WORKER},
            kubeconfig=controller_kubeconfig,
            group_id=f"controller-{unique}",
            identity=f"test-{unique}",
            poll_interval_s=0.2,
            activation_check_s=0.5,
            rollout_timeout_s=60,
            lease_duration_s=4,
            renew_deadline_s=3,
            retry_period_s=0.5,
            health_host="127.0.0.1",
            health_port=0,
        ),
    )


@pytest.fixture
async def controller(settings: Settings, worker: Deployment) -> AsyncIterator[Controller]:
    """The controller role running in this process, stopped gracefully after the test."""
    role = Controller(settings=settings)
    await role.start()
    run = asyncio.create_task(role.run())
    try:
        yield role
    finally:
        await role.stop()
        await run


@pytest.fixture
async def rollout_log(kafka_settings: KafkaSettings) -> AsyncIterator[RolloutLog]:
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
        yield RolloutLog(consumer)
    finally:
        await consumer.stop()


Send = Callable[[ModelPublished], Awaitable[None]]


@pytest.fixture
def send(producer: AIOKafkaProducer, kafka_settings: KafkaSettings) -> Send:
    """Publish a ``model-published`` event as the trainer does."""

    async def send(event: ModelPublished) -> None:
        await publish(producer, kafka_settings.topics.model_published, event.model_name, event)

    return send
