"""Applying rendered overlays to the local control plane and waiting for them (bounded)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from deploy_manifests import Manifest, claims

# Never contacted: kwok fakes the pods, no kubelet mounts anything.
PV_ROOT = "/tmp/reco-kwok-volumes"


@dataclass(frozen=True)
class Kube:
    """The local control plane: its admin kubeconfig and kubectl."""

    kubeconfig: Path
    kubectl: Path

    def run(self, *args: str, stdin: str | None = None, timeout_s: float = 120) -> str:
        done = self.attempt(*args, stdin=stdin, timeout_s=timeout_s)
        assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stderr}"
        return done.stdout

    def attempt(
        self, *args: str, stdin: str | None = None, timeout_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def get(self, *args: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.run("get", "-o", "json", *args))
        return found

    def create_namespace(self, docs: tuple[Manifest, ...]) -> str:
        """Create the overlay's Namespace for real (server-side dry runs need it, and its Pod
        Security labels are what admission enforces)."""
        (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
        self.run("apply", "-f", "-", stdin=yaml.safe_dump(namespace))
        name: str = namespace["metadata"]["name"]
        return name

    def provide_volumes(self, docs: tuple[Manifest, ...], namespace: str) -> list[str]:
        """A PersistentVolume bound in advance to each claim the overlay makes: what a storage
        provisioner does in a real cluster (the local control plane has none)."""
        names = []
        for claim in claims(docs):
            name = f"{namespace}-{claim}"
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {"reco.dev/test-namespace": namespace}},
                "spec": {
                    "capacity": {"storage": "100Gi"},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "hostPath": {"path": f"{PV_ROOT}/{name}"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            }
            self.run("apply", "-f", "-", stdin=yaml.safe_dump(volume))
            names.append(name)
        return names

    def delete_namespace(self, namespace: str) -> None:
        self.attempt("delete", "namespace", namespace, "--wait=false")
        self.attempt("delete", "pv", "-l", f"reco.dev/test-namespace={namespace}", "--wait=false")

    def wait_workloads_ready(self, namespace: str, *, timeout_s: float = 150) -> dict[str, Any]:
        """Every Deployment available with all replicas updated and ready, every StatefulSet's
        replicas ready; returns the last listing. Bounded by ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            listing = self.get("deployments,statefulsets", "-n", namespace)
            pending = [i["metadata"]["name"] for i in listing["items"] if not _ready(i)]
            if not pending:
                return listing
            assert time.monotonic() < deadline, f"not ready after {timeout_s:.0f} s: {pending}"
            time.sleep(1)


def _ready(workload: dict[str, Any]) -> bool:
    spec, status = workload["spec"], workload.get("status", {})
    wanted = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < workload["metadata"]["generation"]:
        return False
    ready = status.get("readyReplicas", 0) == wanted and status.get("updatedReplicas", 0) == wanted
    if workload["kind"] == "Deployment":
        return ready and status.get("availableReplicas", 0) == wanted
    return ready
