"""The node tier: our images as real pods on the real node of scripts/node.sh.

Once per session: the control plane (``scripts/kube.sh up``), the engine and the images
(``scripts/docker.sh``), then the node (``scripts/node.sh up``: containerd and a kubelet in a
network namespace of their own, registered with the control plane; the images loaded into its
containerd). Pods there are started by a real kubelet, probed by it and stopped by it with
SIGTERM. The pods' addresses exist only inside the node's namespace: the tests reach them
through it (``Node.inside``), as a process on the node would.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
# The rendering helpers of the unit tier (tests/unit/deploy): the overlays as they are applied.
sys.path.insert(0, str(REPO / "tests" / "unit" / "deploy"))
# The e2e tier's state comparison (a served state against a clean replay).
sys.path.insert(0, str(REPO / "tests" / "e2e"))
# Cold: the kubelet, kube-proxy and CoreDNS builds (the control plane's and the images' first).
NODE_UP_TIMEOUT_S = 3600


# pytest-timeout counts a test's fixture set-up: the first node test also starts the node
# (containerd, kubelet, kube-proxy, CoreDNS and our images imported: 3-5 min on 2 cores; the
# builds are done beforehand by `scripts/node.sh build` in .ci/run, or within NODE_UP_TIMEOUT_S).
NODE_TEST_TIMEOUT_S = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/node/" in str(item.fspath):
            item.add_marker(pytest.mark.node)
            item.add_marker(pytest.mark.timeout(NODE_TEST_TIMEOUT_S))


def _exports(script: str) -> dict[str, str]:
    out = subprocess.run(
        [str(SCRIPTS / script), "env"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    pairs = (shlex.split(line.removeprefix("export "))[0] for line in out.splitlines())
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


@dataclass(frozen=True)
class Node:
    """The real node and the control plane it belongs to."""

    name: str
    netns: str
    state: Path
    kubeconfig: Path
    kubectl: Path

    def kubectl_run(
        self, *args: str, stdin: str | None = None, timeout_s: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stderr}"
        return done

    def run(self, *args: str, stdin: str | None = None, timeout_s: float = 120) -> str:
        return self.kubectl_run(*args, stdin=stdin, timeout_s=timeout_s).stdout

    def get(self, *args: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.run("get", "-o", "json", *args))
        return found

    def apply(self, *docs: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))

    def inside(self, *argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """A command in the node's network namespace (where the pod and Service IPs route)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def kubelet_metrics(self, path: str = "/metrics/probes") -> str:
        """The kubelet's own metrics, with the node's client certificate (x509 authn)."""
        pki = self.state / "pki"
        done = self.inside(
            "curl", "-sfk", "--max-time", "5",
            "--cert", str(pki / "kubelet.crt"), "--key", str(pki / "kubelet.key"),
            f"https://10.245.0.2:10250{path}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def wait(self, what: str, check: Any, *, timeout_s: float) -> Any:
        """Polls ``check()`` until it returns something truthy; bounded."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = check()
            if found:
                return found
            assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
            time.sleep(1)


@pytest.fixture(scope="session")
def node() -> Node:
    """The control plane, the images and the real node, each started unless it runs."""
    if subprocess.run([str(SCRIPTS / "kube.sh"), "status"], capture_output=True).returncode:
        subprocess.run([str(SCRIPTS / "kube.sh"), "up"], check=True, timeout=NODE_UP_TIMEOUT_S)
    subprocess.run([str(SCRIPTS / "docker.sh"), "up"], check=True, timeout=600)
    subprocess.run([str(SCRIPTS / "docker.sh"), "images"], check=True, timeout=NODE_UP_TIMEOUT_S)
    subprocess.run([str(SCRIPTS / "node.sh"), "up"], check=True, timeout=NODE_UP_TIMEOUT_S)
    kube, env = _exports("kube.sh"), _exports("node.sh")
    return Node(
        name=env["RECO_NODE_NAME"],
        netns=env["RECO_NODE_NETNS"],
        state=Path(env["RECO_NODE_STATE"]),
        kubeconfig=Path(kube["KUBECONFIG"]),
        kubectl=Path(kube["RECO_KUBECTL"]),
    )


@pytest.fixture
def namespace(node: Node) -> Iterator[str]:
    """A namespace of the test's own (restricted Pod Security, as the overlays' own)."""
    name = f"n{uuid.uuid4().hex[:10]}"
    node.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        }
    )
    try:
        yield name
    finally:
        node.kubectl_run("delete", "namespace", name, "--wait=false", check=False)
