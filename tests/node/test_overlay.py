"""The real-node overlay (deploy/k8s/overlays/real-node: the dev overlay pinned to the real node)
applied for real: every pod Running and Ready through its own probes; the shop seeded and the
trainer run through its CronJob (``kubectl create job --from=cronjob/...``) on the node; the
controller, a pod talking to the API server through the ``kubernetes`` Service, patches the
worker Deployment, and the rolling update goes through the startup and readiness probes of new
worker pods that load the model before they are Ready; the API serves through its Service."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_manifests import Manifest, claims, kustomize, wrapper

from conftest import Node
from reco_common.contracts import MODEL_URI_ENV

WORKER = "worker-shop"
LOAD_CLIENT = Path(__file__).with_name("netns_load.py")
READY_TIMEOUT_S = 420  # Kafka's JVM and four Python services starting on 2 shared cores
TRAIN_TIMEOUT_S = 420
ROLLOUT_TIMEOUT_S = 420


@dataclass(frozen=True)
class Deployed:
    namespace: str
    docs: tuple[Manifest, ...]


@pytest.fixture(scope="module")
def deployed(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    namespace = f"r{uuid.uuid4().hex[:10]}"
    directory = wrapper(
        tmp_path_factory.mktemp("overlay"), overlay="real-node", namespace=namespace
    )
    docs = tuple(kustomize(directory))
    try:
        _provide_volumes(node, docs, namespace)
        node.run("apply", "-k", str(directory))
        yield Deployed(namespace=namespace, docs=docs)
    finally:
        node.kubectl_run("delete", "namespace", namespace, "--wait=false", check=False)
        node.kubectl_run(
            "delete", "pv", "-l", f"reco.dev/test-namespace={namespace}", "--wait=false",
            check=False,
        )  # fmt: skip


def _provide_volumes(node: Node, docs: tuple[Manifest, ...], namespace: str) -> None:
    """A hostPath PersistentVolume on the node for each claim (the node has no provisioner);
    world-writable, since hostPath volumes get no fsGroup ownership."""
    for claim in claims(docs):
        path = node.state / "volumes" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o1777)
        node.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": f"{namespace}-{claim}",
                    "labels": {"reco.dev/test-namespace": namespace},
                },
                "spec": {
                    "capacity": {"storage": "100Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": str(path), "type": "Directory"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
        )


def _ready(workload: dict[str, Any]) -> bool:
    spec, status = workload["spec"], workload.get("status", {})
    wanted = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < workload["metadata"]["generation"]:
        return False
    return all(
        status.get(field, 0) == wanted
        for field in ("readyReplicas", "updatedReplicas")
        + (("availableReplicas",) if workload["kind"] == "Deployment" else ())
    )


def _pods(node: Node, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = node.get("pods", "-n", namespace, "-l", selector)["items"]
    return items


def _model_uri(deployment: dict[str, Any]) -> str | None:
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker"
    ]
    values = [e.get("value") for e in container.get("env", []) if e["name"] == MODEL_URI_ENV]
    return values[0] if values else None


def _job(deployed: Deployed, name: str, args: list[str], *, principal: str) -> dict[str, Any]:
    """A Job from the CronJob's template (what `kubectl create job --from` makes), other args,
    as Kafka principal ``reco-<principal>``."""
    (cron,) = [d for d in deployed.docs if d["kind"] == "CronJob"]
    spec = copy.deepcopy(cron["spec"]["jobTemplate"]["spec"])
    container = spec["template"]["spec"]["containers"][0]
    container["args"] = args
    for env in container["env"]:
        if env["name"] == "RECO_KAFKA_USERNAME":
            env["value"] = f"reco-{principal}"
        elif env["name"] == "RECO_KAFKA_PASSWORD":
            env["valueFrom"]["secretKeyRef"] = _password_of(deployed, principal)
    spec.pop("podFailurePolicy", None)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": deployed.namespace},
        "spec": spec,
    }


def test_every_pod_of_the_overlay_is_running_and_ready(node: Node, deployed: Deployed) -> None:
    ns = deployed.namespace
    expected = {
        (d["kind"], d["metadata"]["name"])
        for d in deployed.docs
        if d["kind"] in ("Deployment", "StatefulSet")
    }

    def all_ready() -> bool:
        listing = node.get("deployments,statefulsets", "-n", ns)["items"]
        ready = {(i["kind"], i["metadata"]["name"]) for i in listing if _ready(i)}
        return ready == expected

    # The worker has no model yet: it is up (startup probe) but not ready, by design.
    expected.discard(("Deployment", WORKER))
    node.wait("every workload but the worker ready", all_ready, timeout_s=READY_TIMEOUT_S)
    for pod in node.get("pods", "-n", ns)["items"]:
        assert pod["spec"]["nodeName"] == node.name, pod["metadata"]["name"]
        if _owner_kind(pod) == "Job":  # kafka-access: ran to completion
            assert pod["status"]["phase"] in ("Running", "Succeeded"), pod["metadata"]["name"]
            continue
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        for status in pod["status"]["containerStatuses"]:
            assert status["containerID"].startswith("containerd://")

    def workers_started() -> list[dict[str, Any]]:
        workers = _pods(node, ns, "app.kubernetes.io/name=reco-worker")
        started = [w for w in workers if _container(w).get("started")]
        return workers if len(started) == len(workers) == 2 else []

    # Up (its startup probe passed: Kafka reached as its own principal), not ready: no model.
    workers = node.wait("both workers started", workers_started, timeout_s=READY_TIMEOUT_S)
    assert not any(_container(w)["ready"] for w in workers)


def _password_of(deployed: Deployed, principal: str) -> dict[str, str]:
    """The Secret key of ``principal``'s password, as the kafka-access Job reads it (the
    generated Secrets' names carry kustomize's hash suffix)."""
    (access,) = [d for d in deployed.docs if d["kind"] == "Job"]
    (container,) = access["spec"]["template"]["spec"]["containers"]
    (ref,) = [
        e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if e["name"] == f"PASSWORD_{principal.upper()}"
    ]
    return dict(ref)


def _owner_kind(pod: dict[str, Any]) -> str | None:
    owners = pod["metadata"].get("ownerReferences", [])
    return str(owners[0]["kind"]) if owners else None


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = pod["status"].get("containerStatuses", [{}])
    return statuses[0]


def test_a_training_through_the_cronjob_rolls_the_workers_through_their_probes(
    node: Node, deployed: Deployed
) -> None:
    ns = deployed.namespace
    seed = _job(deployed, "seed", ["synth", "--to-kafka", "--interactions", "20000",
                                   "--users", "1000", "--items", "300", "--seed", "1"],
               principal="shop")  # the shop's event collector writes user-actions  # fmt: skip
    node.apply(seed)
    node.run("wait", "--for=condition=Complete", "job/seed", "-n", ns,
             f"--timeout={TRAIN_TIMEOUT_S}s", timeout_s=TRAIN_TIMEOUT_S + 30)  # fmt: skip
    before = node.get("deployment", WORKER, "-n", ns)
    assert _model_uri(before) is None
    old_pods = {
        p["metadata"]["name"] for p in _pods(node, ns, "app.kubernetes.io/name=reco-worker")
    }

    node.run("create", "job", "train-now", "--from=cronjob/reco-trainer", "-n", ns)
    node.run("wait", "--for=condition=Complete", "job/train-now", "-n", ns,
             f"--timeout={TRAIN_TIMEOUT_S}s", timeout_s=TRAIN_TIMEOUT_S + 30)  # fmt: skip
    (trainer,) = _pods(node, ns, "job-name=train-now")
    assert trainer["spec"]["nodeName"] == node.name

    # The controller (a pod) patches the Deployment; the rollout completes through the probes.
    patched = node.wait(
        "the controller patched the worker Deployment",
        lambda: _model_uri(d := node.get("deployment", WORKER, "-n", ns)) and d,
        timeout_s=120,
    )
    uri = _model_uri(patched)
    assert uri is not None
    assert uri.startswith("s3://reco/"), uri
    node.run("rollout", "status", f"deployment/{WORKER}", "-n", ns,
             f"--timeout={ROLLOUT_TIMEOUT_S}s", timeout_s=ROLLOUT_TIMEOUT_S + 30)  # fmt: skip
    workers = _pods(node, ns, "app.kubernetes.io/name=reco-worker")
    live = [w for w in workers if not w["metadata"].get("deletionTimestamp")]
    assert len(live) == 2
    assert not old_pods & {w["metadata"]["name"] for w in live}
    for worker in live:
        (container,) = worker["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env[MODEL_URI_ENV] == uri
        assert worker["status"]["containerStatuses"][0]["ready"]
    # Each new pod's readiness came from the kubelet's probe of /readyz (a model loaded).
    metrics = node.kubelet_metrics()
    for worker in live:
        name = worker["metadata"]["name"]
        assert f'pod="{name}"' in metrics, name
    assert _api_lists(node, ns)


def _api_lists(node: Node, namespace: str) -> bool:
    """The API answers through its Service (kube-proxy's rules), from inside the node."""
    service = node.get("service", "reco-api", "-n", namespace)
    url = f"http://{service['spec']['clusterIP']}/v1/users/u1/recommendations?n=5"
    deadline = time.monotonic() + 60
    while True:
        done = node.inside("curl", "-sf", "--max-time", "5", url)
        if done.returncode == 0:
            body = json.loads(done.stdout)
            return isinstance(body, dict)
        assert time.monotonic() < deadline, done.stderr
        time.sleep(1)


def test_the_api_rolled_under_load_through_its_service_fails_no_request(
    node: Node, deployed: Deployed
) -> None:
    """preStop + drain + grace period, for real: clients that retry a refused connection see
    no failed request while every API pod is replaced (kubelet SIGTERM, kube-proxy endpoints)."""
    ns = deployed.namespace
    node.run("rollout", "status", "deployment/reco-api", "-n", ns, "--timeout=300s",
             timeout_s=330)  # fmt: skip
    before = {p["metadata"]["name"] for p in _pods(node, ns, "app.kubernetes.io/name=reco-api")}
    service = node.get("service", "reco-api", "-n", ns)
    url = f"http://{service['spec']['clusterIP']}/v1/users/u1/recommendations?n=5"
    load = subprocess.Popen(
        ["ip", "netns", "exec", node.netns, sys.executable, str(LOAD_CLIENT), url,
         "--clients", "4", "--max-s", str(ROLLOUT_TIMEOUT_S + 120)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(5)  # load before the roll
        node.run("rollout", "restart", "deployment/reco-api", "-n", ns)
        node.run("rollout", "status", "deployment/reco-api", "-n", ns,
                 f"--timeout={ROLLOUT_TIMEOUT_S}s", timeout_s=ROLLOUT_TIMEOUT_S + 30)  # fmt: skip
        time.sleep(5)  # and after it
    finally:
        load.terminate()
        out, _ = load.communicate(timeout=60)
    counts = json.loads(out)
    after = {p["metadata"]["name"] for p in _pods(node, ns, "app.kubernetes.io/name=reco-api")
             if not p["metadata"].get("deletionTimestamp")}  # fmt: skip
    assert not before & after, "every API pod was replaced"
    failed = {k: v for k, v in counts.items() if k.startswith("failed")}
    assert counts.get("ok", 0) > 100, counts
    assert not failed, counts
