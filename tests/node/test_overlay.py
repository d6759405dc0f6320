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
from base64 import b64decode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_manifests import Manifest, claims, kustomize, wrapper
from e2e_support import assert_same_state

from conftest import Node
from reco_common.artifact import ITEM_FACTORS
from reco_common.contracts import MODEL_URI_ENV, decode_history_member

WORKER = "worker-shop"
LOAD_CLIENT = Path(__file__).with_name("netns_load.py")
SNAPSHOT = Path(__file__).with_name("netns_snapshot.py")
REPUBLISH = Path(__file__).with_name("republish.py")
ACTIONS_PER_JOB = 2000
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
        # No scheduled training in the middle of a test: trainings here are started by hand.
        node.run("patch", "cronjob", "reco-trainer", "-n", namespace, "--type=merge",
                 "-p", '{"spec": {"suspend": true}}')  # fmt: skip
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


def _job(
    deployed: Deployed,
    name: str,
    args: list[str],
    *,
    principal: str,
    command: list[str] | None = None,
    cpu: str | None = None,
) -> dict[str, Any]:
    """A Job from the CronJob's template (what `kubectl create job --from` makes), other args
    (and ``command``, ``cpu`` requested), as Kafka principal ``reco-<principal>``."""
    (cron,) = [d for d in deployed.docs if d["kind"] == "CronJob"]
    spec = copy.deepcopy(cron["spec"]["jobTemplate"]["spec"])
    container = spec["template"]["spec"]["containers"][0]
    container["args"] = args
    if command is not None:
        container["command"] = command
    if cpu is not None:
        container["resources"]["requests"]["cpu"] = cpu
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


def _worker_pods(node: Node, namespace: str) -> list[dict[str, Any]]:
    """The worker Deployment's pods that are not on their way out."""
    return [
        p
        for p in _pods(node, namespace, "app.kubernetes.io/name=reco-worker")
        if not p["metadata"].get("deletionTimestamp")
    ]


def _pod_model_uri(pod: dict[str, Any]) -> str | None:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "worker"]
    values = [e.get("value") for e in container.get("env", []) if e["name"] == MODEL_URI_ENV]
    return values[0] if values else None


def _rolled_to(node: Node, namespace: str, uri: str) -> bool:
    """The worker Deployment runs ``uri`` on every pod, all of them Ready."""
    deployment = node.get("deployment", WORKER, "-n", namespace)
    pods = _worker_pods(node, namespace)
    return (
        _model_uri(deployment) == uri
        and _ready(deployment)
        and len(pods) == deployment["spec"]["replicas"]
        and all(_pod_model_uri(p) == uri and _container(p).get("ready") for p in pods)
    )


def _republish(
    node: Node, deployed: Deployed, name: str, source: str, *, corrupt: str | None = None
) -> str:
    """``republish.py`` as a Job in the trainer's image, as its principal: ``source`` copied to
    a new version of the same model and announced; the copy's URI (``kubectl logs`` cannot
    reach this node's kubelet, so the URI is known in advance: ``models/<name>/<version>``)."""
    version = f"{name}-{uuid.uuid4().hex[:8]}"
    args = [source, version, *([corrupt] if corrupt else [])]
    job = _job(deployed, f"republish-{name}", args, principal="trainer", cpu="100m",
               command=["python", "-c", REPUBLISH.read_text()])  # fmt: skip
    node.apply(job)
    node.run("wait", "--for=condition=Complete", f"job/republish-{name}", "-n",
             deployed.namespace, f"--timeout={TRAIN_TIMEOUT_S}s",
             timeout_s=TRAIN_TIMEOUT_S + 30)  # fmt: skip
    return f"{source.rstrip('/').rsplit('/', 1)[0]}/{version}"


def _actions(deployed: Deployed, name: str, seed: int) -> dict[str, Any]:
    """A Job producing numbered user actions (event ids ``s<seed>-e<n>``) as the shop."""
    args = ["synth", "--to-kafka", "--interactions", str(ACTIONS_PER_JOB), "--users", "1000",
            "--items", "300", "--seed", str(seed)]  # fmt: skip
    return _job(deployed, name, args, principal="shop", cpu="100m")


def _replay_job(deployed: Deployed, name: str, model_uri: str, key_prefix: str) -> dict[str, Any]:
    """A clean replay: ``reco-worker rebuild`` in the worker's pod template (image, principal,
    Secrets), of the whole topic with one model, into keys under ``key_prefix`` (no archive:
    the topic alone)."""
    (deployment,) = [
        d for d in deployed.docs if d["kind"] == "Deployment" and d["metadata"]["name"] == WORKER
    ]
    template = copy.deepcopy(deployment["spec"]["template"])
    template["metadata"]["labels"] = {"app.kubernetes.io/part-of": "reco",
                                      "reco.dev/clean-replay": key_prefix}  # fmt: skip
    spec = template["spec"]
    spec["restartPolicy"] = "Never"
    spec.pop("affinity", None)
    (container,) = spec["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container.pop(probe, None)
    container["args"] = ["rebuild", "--model", model_uri]
    container["env"] = [e for e in container["env"] if e["name"] != "RECO_WORKER_ARCHIVE_URI"] + [
        {"name": "RECO_REDIS_KEY_PREFIX", "value": key_prefix}
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": deployed.namespace},
        "spec": {"backoffLimit": 0, "template": template},
    }


def _redis_states(node: Node, namespace: str, *prefixes: str) -> dict[str, Any]:
    service = node.get("service", "redis", "-n", namespace)
    url = f"redis://{service['spec']['clusterIP']}:6379/0"
    done = node.inside(sys.executable, str(SNAPSHOT), url, *prefixes, timeout_s=120)
    assert done.returncode == 0, done.stderr
    states: dict[str, Any] = json.loads(done.stdout)
    return states


def _version(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def test_numbered_actions_through_a_worker_rollout_equal_a_clean_replay(
    node: Node, deployed: Deployed
) -> None:
    """Jepsen's pattern on real pods: numbered user actions flow while the controller rolls the
    worker Deployment from v1 to v2 (pods replaced one by one through their probes, the
    consumer group rebalanced at each step); once the stream ends, the served state equals a
    clean replay of the whole topic by one fresh process per model (``reco-worker rebuild``
    into keys of their own): every history, and each list that of the version it is stamped
    with."""
    ns = deployed.namespace
    v1 = _model_uri(node.get("deployment", WORKER, "-n", ns))
    assert v1 is not None, "the training test rolled v1 out"
    node.wait("v1 on every worker", lambda: _rolled_to(node, ns, v1), timeout_s=ROLLOUT_TIMEOUT_S)

    node.apply(_actions(deployed, "actions-0", seed=100))  # before the new model is announced
    v2 = _republish(node, deployed, "v2", v1)
    streams, during = 1, 0
    while not _rolled_to(node, ns, v2):
        node.run("wait", "--for=condition=Complete", f"job/actions-{streams - 1}", "-n", ns,
                 f"--timeout={TRAIN_TIMEOUT_S}s", timeout_s=TRAIN_TIMEOUT_S + 30)  # fmt: skip
        rolling = _model_uri(node.get("deployment", WORKER, "-n", ns)) == v2
        node.apply(_actions(deployed, f"actions-{streams}", seed=100 + streams))
        during += rolling and not _rolled_to(node, ns, v2)
        streams += 1
        assert streams < 60, "the rollout to v2 did not finish"
    node.run("wait", "--for=condition=Complete", f"job/actions-{streams - 1}", "-n", ns,
             f"--timeout={TRAIN_TIMEOUT_S}s", timeout_s=TRAIN_TIMEOUT_S + 30)  # fmt: skip
    assert during >= 1, "no actions were produced while the worker pods were being replaced"

    replays = {_version(v1): "clean1", _version(v2): "clean2"}
    for uri, prefix in ((v1, "clean1"), (v2, "clean2")):
        node.apply(_replay_job(deployed, f"replay-{prefix}", uri, prefix))
    for prefix in replays.values():
        node.run("wait", "--for=condition=Complete", f"job/replay-{prefix}", "-n", ns,
                 f"--timeout={TRAIN_TIMEOUT_S}s", timeout_s=TRAIN_TIMEOUT_S + 30)  # fmt: skip

    def equal_to_the_replay() -> bool:
        states = _redis_states(node, ns, "reco", *replays.values())
        expected = {version: states[prefix] for version, prefix in replays.items()}
        try:
            assert_same_state(states["reco"], expected)
        except AssertionError:
            if time.monotonic() > settle_deadline:
                raise
            return False
        return True

    settle_deadline = time.monotonic() + 120  # the live workers finish the last actions
    node.wait("the served state equal to the clean replay", equal_to_the_replay,
              timeout_s=180)  # fmt: skip
    served = _redis_states(node, ns, "reco")["reco"]
    stamps = {v["model_version"] for k, v in served.items() if k.startswith(":rec:")}
    assert _version(v2) in stamps, "the actions after the rollout were scored by v2"
    served_events = {
        decode_history_member(b64decode(member), ts).event_id
        for key, members in served.items()
        if key.startswith(":hist:")
        for member, ts in members
    }
    for seed in range(100, 100 + streams):  # each stream's newest actions are in histories
        assert any(e.startswith(f"s{seed}-e") for e in served_events), f"stream {seed} lost"


def test_a_model_that_cannot_load_keeps_its_pods_unready_and_is_rolled_back(
    node: Node, deployed: Deployed
) -> None:
    """A published model whose factors file is corrupt (its manifest intact, so the gate passes
    it): the new pod refuses it and stays up but unready (its startup probe passes, its
    readiness probe never does), the old pods keep serving (maxUnavailable 0), Kubernetes
    reports ProgressDeadlineExceeded and the controller patches the previous model back."""
    ns = deployed.namespace
    good = _model_uri(node.get("deployment", WORKER, "-n", ns))
    assert good is not None
    node.wait("the good model on every worker", lambda: _rolled_to(node, ns, good),
              timeout_s=ROLLOUT_TIMEOUT_S)  # fmt: skip
    bad = _republish(node, deployed, "bad", good, corrupt=ITEM_FACTORS)

    node.wait("the controller patched the bad model in",
              lambda: _model_uri(node.get("deployment", WORKER, "-n", ns)) == bad,
              timeout_s=120)  # fmt: skip
    seen_bad: set[str] = set()

    def rolled_back() -> bool:
        pods = _worker_pods(node, ns)
        for pod in pods:
            if _pod_model_uri(pod) == bad:
                seen_bad.add(pod["metadata"]["name"])
                assert not _container(pod).get("ready"), "a pod with the corrupt model is Ready"
        good_ready = [p for p in pods if _pod_model_uri(p) == good and _container(p).get("ready")]
        assert len(good_ready) >= 2 or _model_uri(node.get("deployment", WORKER, "-n", ns)) == good
        return _rolled_to(node, ns, good)

    # progressDeadlineSeconds (180) + the controller's reaction + the rollback itself
    node.wait("the controller rolled the corrupt model back", rolled_back,
              timeout_s=ROLLOUT_TIMEOUT_S)  # fmt: skip
    assert seen_bad, "a pod was started on the corrupt model"
    deployment = node.get("deployment", WORKER, "-n", ns)
    assert _model_uri(deployment) == good
    assert _api_lists(node, ns)
