"""Rendering deploy/k8s with kustomize and reading the result: shared by the deploy tests.

``kubectl kustomize`` comes from the local control plane's build (``scripts/kube.sh env``:
RECO_KUBECTL, the same kubectl the integration tests apply with) or, for rendering only, the
machine's ``kubectl``. Rendering needs no cluster.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod", "real-node")
COMPONENTS = ("elastic-workers", "gpu-trainer", "monitoring", "shared-model-cache")
KUBE_SH = REPO / "scripts" / "kube.sh"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "CronJob", "Job")

Manifest = dict[str, Any]


@functools.cache
def kube_env() -> dict[str, str]:
    """``scripts/kube.sh env`` as a dict (KUBECONFIG, RECO_KUBECTL); empty if it fails."""
    done = subprocess.run(
        [str(KUBE_SH), "env"], capture_output=True, text=True, check=False, timeout=30
    )
    if done.returncode:
        return {}
    lines = (line.removeprefix("export ") for line in done.stdout.splitlines())
    return dict(line.split("=", 1) for line in lines if "=" in line)


@functools.cache
def kubectl() -> str | None:
    """The control plane's kubectl when it was built, else the machine's, else None."""
    built = kube_env().get("RECO_KUBECTL")
    if built and os.access(built, os.X_OK):
        return built
    return shutil.which("kubectl")


def kustomize(directory: Path) -> list[Manifest]:
    """``kubectl kustomize DIR``, parsed; raises with kustomize's message when it fails."""
    binary = kubectl()
    if binary is None:
        raise RuntimeError("no kubectl: run `scripts/kube.sh build` (or install kubectl)")
    done = subprocess.run(
        [binary, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode:
        raise RuntimeError(f"kubectl kustomize {directory}: {done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def wrapper(
    where: Path, *, overlay: str, namespace: str | None = None, components: tuple[str, ...] = ()
) -> Path:
    """A kustomization in ``where`` that builds ``overlay`` (+ ``components``, as if listed in
    the overlay) in ``namespace`` (default: the overlay's): how the tests deploy an overlay
    beside other tests' namespaces."""
    where.mkdir(parents=True, exist_ok=True)
    source = K8S / "overlays" / overlay
    own = yaml.safe_load((source / "kustomization.yaml").read_text())["namespace"]
    doc: Manifest = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace or own,
        "resources": [os.path.relpath(source, where)],
    }
    if components:
        doc["components"] = [os.path.relpath(K8S / "components" / c, where) for c in components]
    (where / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return where


@functools.cache
def rendered(overlay: str, components: tuple[str, ...] = ()) -> tuple[Manifest, ...]:
    """The overlay as ``kubectl apply -k`` would send it (cached: the tests only read it)."""
    if not components:
        return tuple(kustomize(K8S / "overlays" / overlay))
    with tempfile.TemporaryDirectory(prefix="reco-kustomize-") as tmp:
        return tuple(kustomize(wrapper(Path(tmp), overlay=overlay, components=components)))


def find(docs: tuple[Manifest, ...], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Manifest) -> Manifest:
    """The pod template's spec of a Deployment, StatefulSet, Job or CronJob."""
    if workload["kind"] == "CronJob":
        spec: Manifest = workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    spec = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Manifest) -> dict[str, str]:
    template = (
        workload["spec"]["jobTemplate"]["spec"]["template"]
        if workload["kind"] == "CronJob"
        else workload["spec"]["template"]
    )
    labels: dict[str, str] = template["metadata"].get("labels", {})
    return labels


def workloads(docs: tuple[Manifest, ...]) -> Iterator[Manifest]:
    return (d for d in docs if d["kind"] in WORKLOAD_KINDS)


def containers(spec: Manifest, *, init: bool = True) -> list[Manifest]:
    found: list[Manifest] = list(spec.get("containers", []))
    return found + list(spec.get("initContainers", [])) if init else found


def container(workload: Manifest, name: str) -> Manifest:
    matches = [c for c in containers(pod_spec(workload)) if c["name"] == name]
    assert len(matches) == 1, f"{workload['metadata']['name']} has no container {name}"
    return matches[0]


def env_value(container_: Manifest, name: str) -> str | None:
    for var in container_.get("env", []):
        if var["name"] == name:
            value: str | None = var.get("value")
            return value
    return None


@dataclass(frozen=True)
class SecretSource:
    """Where Secret values come from: rendered Secrets (dev), or stand-ins for the Secrets an
    operator creates out of band (prod) with the keys docs/deploy.md tells them to set."""

    docs: tuple[Manifest, ...]
    out_of_band: Mapping[str, Mapping[str, str]]

    def data(self, name: str) -> Mapping[str, str]:
        for secret in find(self.docs, "Secret", name):
            raw: dict[str, str] = secret.get("data", {})
            return {k: base64.b64decode(v).decode() for k, v in raw.items()}
        return self.out_of_band[name]


def container_env(
    docs: tuple[Manifest, ...],
    container_: Manifest,
    *,
    secrets: SecretSource,
    fields: Mapping[str, str],
) -> dict[str, str]:
    """The environment the container starts with: envFrom (ConfigMaps, Secrets) then env, with
    ``$(VAR)`` references expanded and downward-API fields taken from ``fields``."""

    def config_map(name: str) -> Mapping[str, str]:
        data: dict[str, str] = one(docs, "ConfigMap", name).get("data", {})
        return data

    env: dict[str, str] = {}
    for source in container_.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map(source["configMapRef"]["name"]))
        if "secretRef" in source:
            env.update(secrets.data(source["secretRef"]["name"]))
    for var in container_.get("env", []):
        ref = var.get("valueFrom")
        if ref is None:
            value = var.get("value", "")
            for known, known_value in env.items():
                value = value.replace(f"$({known})", known_value)
            env[var["name"]] = value
        elif "configMapKeyRef" in ref:
            env[var["name"]] = config_map(ref["configMapKeyRef"]["name"])[
                ref["configMapKeyRef"]["key"]
            ]
        elif "secretKeyRef" in ref:
            env[var["name"]] = secrets.data(ref["secretKeyRef"]["name"])[ref["secretKeyRef"]["key"]]
        else:
            env[var["name"]] = fields[ref["fieldRef"]["fieldPath"]]
    return env


def claims(docs: tuple[Manifest, ...]) -> list[str]:
    """The PersistentVolumeClaims ``docs`` make, their StatefulSets' included (one per replica
    and claim template): what a storage provisioner would be asked for."""
    names = [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"]
    for sts in (d for d in docs if d["kind"] == "StatefulSet"):
        for template in sts["spec"].get("volumeClaimTemplates", []):
            names += [
                f"{template['metadata']['name']}-{sts['metadata']['name']}-{i}"
                for i in range(sts["spec"]["replicas"])
            ]
    return names
