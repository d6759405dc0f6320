"""Deploy tests against real servers: the local control plane (scripts/kube.sh, marker `kube`)
and the dev stack; and static analysis that needs a registry (checkov).

The rendering helpers live with the unit tier (tests/unit/deploy/deploy_manifests.py): the
tests here apply exactly what the unit tests check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "deploy"))

from deploy_kube import Kube
from deploy_manifests import KUBE_SH, kube_env


@pytest.fixture(scope="session")
def kube() -> Kube:
    """The local control plane, started unless it runs (binaries are built once and cached)."""
    if subprocess.run([str(KUBE_SH), "status"], capture_output=True, check=False).returncode:
        subprocess.run([str(KUBE_SH), "up"], check=True, timeout=1800)
    kube_env.cache_clear()
    env = kube_env()
    return Kube(kubeconfig=Path(env["KUBECONFIG"]), kubectl=Path(env["RECO_KUBECTL"]))
