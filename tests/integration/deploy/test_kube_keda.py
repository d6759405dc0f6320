"""The elastic-workers component against KEDA's real CRDs on the local control plane.

KEDA's CRDs (its module's config/crd/bases, fetched once through the Go module proxy at the
version the component is written against) are applied to the API server; then prod with the
component (and dev with it) passes a server-side dry run as a whole, and its ScaledObject and
TriggerAuthentication are applied for real with strict field validation: a misspelt or misplaced
field, a wrong type or an out-of-range value fails here, as it would on a cluster; in dev, the
Secret of KEDA's principal that the TriggerAuthentication names exists with the keys it reads.
No KEDA operator runs: this checks the objects, not the scaling
(tests/integration/worker/test_worker_elastic.py scales real worker processes).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_kube import Kube
from deploy_manifests import Manifest, find, kustomize, wrapper

pytestmark = pytest.mark.kube

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"
CRDS = ("keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml")
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
NEEDS_OTHER_CRDS = {"ServiceMonitor", "PrometheusRule"}


def keda_module() -> Path:
    """KEDA's module directory from the Go module cache, downloaded first if need be."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain to fetch KEDA's CRDs through the module proxy")
    done = subprocess.run(
        [go, "mod", "download", "-json", f"{KEDA_MODULE}@{KEDA_VERSION}"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    assert done.returncode == 0, done.stderr or done.stdout
    return Path(json.loads(done.stdout)["Dir"])


@pytest.fixture(scope="module")
def keda_crds(kube: Kube) -> None:
    """KEDA's CRDs in the API server (server-side: they are too large for client-side apply's
    annotation), established. Cluster-wide and left in place, like an installed KEDA."""
    bases = keda_module() / "config" / "crd" / "bases"
    for name in CRDS:
        kube.run("apply", "--server-side", "--force-conflicts", "-f", str(bases / name))
    names = [yaml.safe_load((bases / n).read_text())["metadata"]["name"] for n in CRDS]
    kube.run("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))


@pytest.fixture
def namespace(kube: Kube, unique: str) -> Iterator[str]:
    name = f"t{unique}"
    yield name
    kube.delete_namespace(name)


def _render(where: Path, namespace: str, overlay: str = "prod") -> tuple[Manifest, ...]:
    directory = wrapper(
        where, overlay=overlay, namespace=namespace, components=("elastic-workers",)
    )
    return tuple(d for d in kustomize(directory) if d["kind"] not in NEEDS_OTHER_CRDS)


def _apply_strict(kube: Kube, docs: list[Manifest]) -> subprocess.CompletedProcess[str]:
    return kube.attempt(
        "apply", "--server-side", "--validate=strict", "-f", "-", stdin=yaml.safe_dump_all(docs)
    )


@pytest.mark.parametrize("overlay", ["prod", "dev"])
def test_the_overlay_with_elastic_workers_passes_a_server_side_dry_run(
    overlay: str, keda_crds: None, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    docs = _render(tmp_path, namespace, overlay)
    assert {d["kind"] for d in docs} >= KEDA_KINDS
    kube.create_namespace(docs)
    rest = [d for d in docs if d["kind"] != "Namespace"]
    done = kube.attempt(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=yaml.safe_dump_all(rest)
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert done.stdout.count("(server dry run)") == len(rest)


def test_the_keda_objects_are_accepted_by_keda_s_schema(
    keda_crds: None, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    docs = _render(tmp_path, namespace)
    kube.create_namespace(docs)
    keda = [d for d in docs if d["kind"] in KEDA_KINDS]
    done = _apply_strict(kube, keda)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    (scaled,) = find(docs, "ScaledObject")
    stored = kube.get("scaledobject", scaled["metadata"]["name"], "-n", namespace)
    assert stored["spec"]["triggers"] == scaled["spec"]["triggers"]
    assert stored["spec"]["advanced"] == scaled["spec"]["advanced"]
    assert stored["spec"]["maxReplicaCount"] == scaled["spec"]["maxReplicaCount"]
    (auth,) = find(docs, "TriggerAuthentication")
    stored_auth = kube.get("triggerauthentication", auth["metadata"]["name"], "-n", namespace)
    assert stored_auth["spec"] == auth["spec"]

    # The schema is really enforced: the same object with a field KEDA does not have (the
    # HPA's spelling) or a value of the wrong type is refused.
    misspelt = copy.deepcopy(scaled)
    misspelt["spec"]["minReplicas"] = misspelt["spec"].pop("minReplicaCount")
    done = _apply_strict(kube, [misspelt])
    assert done.returncode != 0
    assert "minReplicas" in done.stderr, done.stderr
    wrong_type = copy.deepcopy(scaled)
    wrong_type["spec"]["fallback"]["behavior"] = "never"
    done = _apply_strict(kube, [wrong_type])
    assert done.returncode != 0
    assert "behavior" in done.stderr, done.stderr
    keyless = copy.deepcopy(auth)
    del keyless["spec"]["secretTargetRef"][0]["key"]
    done = _apply_strict(kube, [keyless])
    assert done.returncode != 0
    assert "key" in done.stderr, done.stderr


def test_the_keda_principal_s_secret_is_the_one_the_dev_overlay_generates(
    keda_crds: None, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """The TriggerAuthentication names the generated Secret, hash suffix included (kustomize
    rewrites the reference through the component's kustomizeconfig.yaml): applied for real, the
    Secret it names holds every key it reads."""
    docs = _render(tmp_path, namespace, "dev")
    kube.create_namespace(docs)
    (auth,) = find(docs, "TriggerAuthentication")
    refs = auth["spec"]["secretTargetRef"]
    secrets = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == refs[0]["name"]
    ]
    done = _apply_strict(kube, [*secrets, auth])
    assert done.returncode == 0, done.stderr
    for ref in refs:
        stored = kube.get("secret", ref["name"], "-n", namespace)
        assert ref["key"] in stored["data"], (ref, sorted(stored["data"]))
