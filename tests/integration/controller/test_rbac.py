"""The controller's Role (deploy/k8s/base/controller) grants what it needs and nothing more."""

from __future__ import annotations

from pathlib import Path

from controller_kube import WORKER, Kube

# (verb, resource, namespace or None for the test's own) → allowed
EXPECTED = {
    ("get", f"deployments.apps/{WORKER}", None): "yes",
    ("patch", f"deployments.apps/{WORKER}", None): "yes",
    ("update", f"deployments.apps/{WORKER}", None): "no",
    ("delete", f"deployments.apps/{WORKER}", None): "no",
    ("patch", "deployments.apps/another-deployment", None): "no",
    ("list", "deployments.apps", None): "no",
    ("get", "leases.coordination.k8s.io/reco-controller", None): "yes",
    ("update", "leases.coordination.k8s.io/reco-controller", None): "yes",
    ("create", "leases.coordination.k8s.io", None): "yes",
    ("update", "leases.coordination.k8s.io/another-lease", None): "no",
    ("delete", "leases.coordination.k8s.io/reco-controller", None): "no",
    ("get", "pods", None): "no",
    ("get", "secrets", None): "no",
    ("patch", f"deployments.apps/{WORKER}", "default"): "no",
    ("create", "leases.coordination.k8s.io", "kube-system"): "no",
}


def test_the_role_allows_only_the_named_objects_in_its_namespace(
    kube: Kube, namespace: str, controller_kubeconfig: Path
) -> None:
    who = f"--as=system:serviceaccount:{namespace}:reco-controller"
    answers = {
        (verb, resource, ns): kube.run(
            "auth", "can-i", verb, resource, "-n", ns or namespace, who, ok=(0, 1)
        )
        for verb, resource, ns in EXPECTED
    }
    assert answers == EXPECTED
    assert kube.run("auth", "can-i", "list", "namespaces", who, ok=(0, 1)) == "no"
