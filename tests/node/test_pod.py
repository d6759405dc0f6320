"""One of our images as a real pod on the real node: started by the kubelet through containerd,
kept out of rotation by its readiness probe until Redis answers, then Ready; the probes are the
kubelet's (its own metrics count them), the Redis it reaches is a Service name resolved by the
cluster DNS and routed by kube-proxy."""

from __future__ import annotations

import re
import time
from typing import Any

import yaml

from conftest import REPO, Node

ON_THE_REAL_NODE: dict[str, Any] = {
    "nodeSelector": {"reco.dev/node": "real"},
    "tolerations": [
        {"key": "reco.dev/node", "operator": "Equal", "value": "real", "effect": "NoSchedule"}
    ],
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "automountServiceAccountToken": False,
    "enableServiceLinks": False,
}
HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def image(service: str) -> str:
    text = (REPO / "services" / service / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', text, re.MULTILINE)
    assert version
    return f"reco-{service}:{version[1]}"


def pod(name: str, container: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            **ON_THE_REAL_NODE,
            "terminationGracePeriodSeconds": 30,
            "containers": [{**container, "securityContext": HARDENED}],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    }


def api_pod() -> dict[str, Any]:
    """The API as the base manifest runs it (same probes), its Redis a Service name."""
    return pod(
        "api",
        {
            "name": "api",
            "image": image("api"),
            "env": [
                {"name": "RECO_ENV", "value": "dev"},
                {"name": "RECO_REDIS_URL", "value": "redis://redis:6379/0"},
                {"name": "RECO_API_PORT", "value": "8080"},
            ],
            "ports": [{"name": "http", "containerPort": 8080}],
            "startupProbe": {
                "httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 1,
                "failureThreshold": 60,
            },
            "readinessProbe": {
                "httpGet": {"path": "/readyz", "port": "http"},
                "periodSeconds": 2,
                "timeoutSeconds": 1,
                "failureThreshold": 1,
            },
            "resources": {
                "requests": {"cpu": "50m", "memory": "128Mi"},
                "limits": {"cpu": "1", "memory": "512Mi"},
            },
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        },
        {"app": "api"},
    )


def redis_pod_and_service() -> list[dict[str, Any]]:
    redis = pod(
        "redis",
        {
            "name": "redis",
            "image": "reco-local/redis:7.0-bookworm",
            # `command` bypasses the image's entrypoint, and Debian's redis-server (unlike the
            # official image's build) starts in protected mode: other pods would be DENIED.
            "command": ["redis-server"],
            "args": ["--dir", "/tmp", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
            "ports": [{"name": "redis", "containerPort": 6379}],
            "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 2},
            "resources": {
                "requests": {"cpu": "20m", "memory": "32Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        },
        {"app": "redis"},
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "redis"},
        "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379, "targetPort": "redis"}]},
    }
    return [redis, service]


def probe_counts(metrics: str, namespace: str, name: str) -> dict[tuple[str, str], float]:
    """``prober_probe_total`` of one pod: (probe type, result) -> count."""
    counts: dict[tuple[str, str], float] = {}
    for line in metrics.splitlines():
        if not line.startswith("prober_probe_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("namespace") == namespace and labels.get("pod") == name:
            key = (labels["probe_type"], labels["result"])
            counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def condition(found: dict[str, Any], kind: str) -> str | None:
    for c in found.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            status: str = c["status"]
            return status
    return None


def test_the_api_pod_is_ready_only_once_redis_answers(node: Node, namespace: str) -> None:
    ns = ("-n", namespace)
    node.run(*ns, "apply", "-f", "-", stdin=_yaml(api_pod()))

    def started() -> dict[str, Any] | None:
        found = node.get(*ns, "pod", "api")
        statuses = found.get("status", {}).get("containerStatuses", [])
        return found if statuses and statuses[0].get("started") else None

    found = node.wait("the API container started (startup probe passed)", started, timeout_s=180)
    assert found["spec"]["nodeName"] == node.name
    assert found["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert found["status"]["podIP"].startswith("10.244.0.")
    # Without Redis, /readyz answers 503: the kubelet keeps the pod out of rotation.
    for _ in range(3):
        time.sleep(2)
        assert condition(node.get(*ns, "pod", "api"), "Ready") == "False"
    failed = probe_counts(node.kubelet_metrics(), namespace, "api")
    assert failed.get(("Readiness", "failed"), 0) >= 2, failed
    assert failed.get(("Startup", "successful"), 0) >= 1, failed

    node.run(*ns, "apply", "-f", "-", stdin=_yaml(*redis_pod_and_service()))
    node.wait(
        "the API pod Ready once the Redis Service answers",
        lambda: condition(node.get(*ns, "pod", "api"), "Ready") == "True",
        timeout_s=120,
    )
    after = probe_counts(node.kubelet_metrics(), namespace, "api")
    assert after.get(("Readiness", "successful"), 0) >= 1, after
    # The pod answers on its own address, inside the node's network namespace.
    ip = node.get(*ns, "pod", "api")["status"]["podIP"]
    done = node.inside("curl", "-sf", "--max-time", "5", f"http://{ip}:8080/readyz")
    assert done.returncode == 0, done.stderr
    assert '"ready":true' in done.stdout.replace(" ", ""), done.stdout


def _yaml(*docs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(docs)
