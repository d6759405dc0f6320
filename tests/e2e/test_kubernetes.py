"""The ``kubernetes`` target on the local control plane (scripts/kube.sh: kwok fakes the pods).

The controller runs as a process against the API server and rolls the worker Deployment to a
published model; the workers then run as local processes with the ``MODEL_URI`` the Deployment
holds, read back through the API server, and the API serves that model's lists. Skipped, with
the reason, only when the control plane cannot start on this machine.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import Launcher, Model, now, quick_api, start_workers, until
from redis.asyncio import Redis

from reco_common.contracts import MODEL_URI_ENV, ActionType, UserAction
from reco_common.kafka import publish, start_producer
from reco_devkit import services
from reco_devkit.observe import ModelTopics, recommendations
from reco_devkit.services import RunSpace
from reco_devkit.traffic import ActionSender, ShopFiles

KUBE_SH = Path(__file__).resolve().parents[2] / "scripts" / "kube.sh"
WORKER = "worker-shop"
CONTAINER = "worker"
KUBE_UP_TIMEOUT_S = 1200  # the first `up` builds the binaries from source


@dataclass(frozen=True)
class Kube:
    kubeconfig: Path
    kubectl: Path

    def run(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def deployment(self, namespace: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(
            self.run("get", "deployment", WORKER, "-n", namespace, "-o", "json")
        )
        return found


@pytest.fixture(scope="module")
def kube() -> Kube:
    """The local control plane, started unless it runs; skip when it cannot start."""
    status = subprocess.run([str(KUBE_SH), "status"], capture_output=True, check=False)
    if status.returncode != 0:
        try:
            up = subprocess.run(
                [str(KUBE_SH), "up"], capture_output=True, text=True, timeout=KUBE_UP_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.skip(f"the local control plane did not start within {KUBE_UP_TIMEOUT_S} s")
        if up.returncode != 0:
            pytest.skip(f"the local control plane cannot start: {up.stderr.strip()[-600:]}")
    exports = subprocess.run(
        [str(KUBE_SH), "env"], capture_output=True, text=True, check=True
    ).stdout
    env = dict(
        line.removeprefix("export ").split("=", 1) for line in exports.splitlines() if "=" in line
    )
    return Kube(kubeconfig=Path(env["KUBECONFIG"]), kubectl=Path(env["RECO_KUBECTL"]))


@pytest.fixture
def namespace(kube: Kube, space: RunSpace) -> Iterator[str]:
    name = space.run_id
    kube.run("create", "namespace", name)
    try:
        yield name
    finally:
        kube.run("delete", "namespace", name, "--wait=false")


def worker_deployment(model_uri: str) -> dict[str, Any]:
    """The worker Deployment as it would run before the rollout (two replicas on kwok's node)."""
    labels = {"app.kubernetes.io/name": WORKER}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": WORKER, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"type": "kwok", "reco.dev/pool": "general"},
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": "reco-worker:e2e",
                            "env": [{"name": MODEL_URI_ENV, "value": model_uri}],
                        }
                    ],
                },
            },
        },
    }


def model_uri_of(deployment: dict[str, Any]) -> str:
    [container] = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER
    ]
    [value] = [e["value"] for e in container["env"] if e["name"] == MODEL_URI_ENV]
    uri: str = value
    return uri


@pytest.mark.kube
async def test_the_controller_rolls_the_deployment_and_workers_run_what_it_holds(
    kube: Kube,
    namespace: str,
    space: RunSpace,
    launcher: Launcher,
    models: tuple[Model, Model],
    shop: ShopFiles,
    redis: Redis,
) -> None:
    first, second = models
    kube.run("apply", "-n", namespace, "-f", "-", stdin=json.dumps(worker_deployment(first.uri)))
    kube.run("rollout", "status", f"deployment/{WORKER}", "-n", namespace, "--timeout=90s")
    topics = ModelTopics(space.kafka)
    await topics.start()
    try:
        await launcher.start(
            services.kubernetes_controller(
                space, kubeconfig=kube.kubeconfig, namespace=namespace, deployment=WORKER
            )
        )
        producer = await start_producer(space.kafka)
        try:
            await publish(producer, space.kafka.topics.model_published, "shop", second.published())
        finally:
            await producer.stop()
        await topics.wait_for(second.version, "succeeded", timeout_s=90)
    finally:
        await topics.stop()
    kube.run("rollout", "status", f"deployment/{WORKER}", "-n", namespace, "--timeout=30s")
    deployment = kube.deployment(namespace)
    held = model_uri_of(deployment)

    workers = await start_workers(launcher, space, 2, model_uri=held)
    api = await launcher.start(quick_api(space))
    user = shop.users[2]
    async with ActionSender(space.kafka) as sender:
        await sender.send(
            [
                UserAction(
                    event_id="k1",
                    user_id=user,
                    item_id=shop.items[0],
                    action=ActionType.CLICK,
                    ts=now(),
                )
            ]
        )
    async with httpx.AsyncClient() as http:

        async def personalized() -> dict[str, Any] | None:
            assert api.base_url is not None
            listed = await recommendations(http, api.base_url, user)
            return listed if listed and listed["source"] == "personalized" else None

        listed = await until(personalized, what=f"{user}'s list", timeout_s=30)
        served = [
            (await http.get(f"{w.base_url}/v1/model", headers=services.CONTROL_HEADERS)).json()[
                "version"
            ]
            for w in workers
        ]

    assert held == second.uri
    assert deployment["metadata"]["annotations"]["reco.dev/model-version"] == second.version
    assert deployment["status"]["updatedReplicas"] == deployment["spec"]["replicas"] == 2
    assert served == [second.version, second.version]
    assert listed["model_version"] == second.version
