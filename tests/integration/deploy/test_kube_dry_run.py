"""`kubectl apply --dry-run=server` of every overlay against the real API server: schemas,
defaulting, admission (Pod Security `restricted` is enforced on the namespace) all pass."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_kube import Kube
from deploy_manifests import kustomize, wrapper

pytestmark = pytest.mark.kube

# The monitoring component needs the Prometheus Operator's CRDs, which the local control plane
# does not have: its ServiceMonitors and PrometheusRules are checked by the unit tests; the rest
# is applied here.
NEEDS_CRDS = {"ServiceMonitor", "PrometheusRule"}
VARIANTS = {
    "dev": ("dev", ()),
    "prod": ("prod", ()),
    "prod+components": ("prod", ("gpu-trainer", "monitoring")),
}


@pytest.fixture
def namespace(kube: Kube, unique: str) -> Iterator[str]:
    name = f"t{unique}"
    yield name
    kube.delete_namespace(name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_overlay_passes_a_server_side_dry_run(
    variant: str, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    overlay, components = VARIANTS[variant]
    docs = tuple(
        d
        for d in kustomize(
            wrapper(tmp_path, overlay=overlay, namespace=namespace, components=components)
        )
        if d["kind"] not in NEEDS_CRDS
    )
    kube.create_namespace(docs)
    rest = [d for d in docs if d["kind"] != "Namespace"]
    done = kube.attempt("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(rest))
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # e.g. "would violate PodSecurity"
    assert done.stdout.count("(server dry run)") == len(rest)
