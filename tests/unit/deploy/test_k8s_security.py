"""Every overlay renders, and every pod in it meets the restricted profile, has requests and
limits, probes and a pinned image; RBAC and NetworkPolicies are least privilege."""

from __future__ import annotations

import re

import pytest
from deploy_manifests import (
    COMPONENTS,
    K8S,
    OVERLAYS,
    Manifest,
    containers,
    find,
    kustomize,
    pod_labels,
    pod_spec,
    rendered,
    workloads,
)

pytestmark = pytest.mark.usefixtures("has_kubectl")

# Every overlay, and prod with every optional component: what a user can apply.
VARIANTS = [(o, ()) for o in OVERLAYS] + [("prod", COMPONENTS)]
IDS = [f"{o}{'+' + '+'.join(c) if c else ''}" for o, c in VARIANTS]
PINNED = re.compile(r"^[\w.\-/]+:(?!latest$)[\w][\w.\-]*$")


@pytest.fixture(params=VARIANTS, ids=IDS)
def docs(request: pytest.FixtureRequest) -> tuple[Manifest, ...]:
    overlay, components = request.param
    return rendered(overlay, components)


@pytest.mark.parametrize(
    "directory",
    [p.parent.relative_to(K8S) for p in sorted(K8S.glob("base/**/kustomization.yaml"))]
    + [f"overlays/{o}" for o in OVERLAYS],
    ids=str,
)
def test_every_kustomization_renders(directory: str) -> None:
    assert kustomize(K8S / directory)


def test_every_workload_is_in_the_restricted_namespace(docs: tuple[Manifest, ...]) -> None:
    (namespace,) = find(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {namespace["metadata"]["name"]}


def test_every_pod_runs_restricted(docs: tuple[Manifest, ...]) -> None:
    for workload in workloads(docs):
        name, spec = workload["metadata"]["name"], pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        assert isinstance(pod_security.get("runAsUser"), int), f"{name}: a numeric non-root uid"
        assert pod_security["runAsUser"] > 0, name
        assert pod_security.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        for c in containers(spec):
            security = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("capabilities") == {"drop": ["ALL"]}, where
            assert "privileged" not in security, where
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), name


def test_every_writable_path_is_a_volume_and_tmp_is_writable(docs: tuple[Manifest, ...]) -> None:
    for workload in workloads(docs):
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for c in containers(spec, init=False):
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            where = f"{workload['metadata']['name']}/{c['name']}"
            for mount_name in mounts.values():
                assert mount_name in volumes or mount_name in claims, where
            if c["image"].split("/")[-1].startswith("reco-"):
                assert "/tmp" in mounts, f"{where}: our images write temp files to /tmp"
                tmp = volumes[mounts["/tmp"]]
                assert "sizeLimit" in tmp["emptyDir"], f"{where}: an emptyDir /tmp is bounded"


def test_every_container_has_requests_and_limits(docs: tuple[Manifest, ...]) -> None:
    for workload in workloads(docs):
        for c in containers(pod_spec(workload)):
            resources = c.get("resources", {})
            where = f"{workload['metadata']['name']}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {kind}"


def test_every_long_running_container_has_probes(docs: tuple[Manifest, ...]) -> None:
    for workload in workloads(docs):
        if workload["kind"] in ("CronJob", "Job"):
            continue
        for c in containers(pod_spec(workload), init=False):
            where = f"{workload['metadata']['name']}/{c['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: {probe}"
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                if action is not None and isinstance(action["port"], str):
                    assert action["port"] in ports, f"{where}: {probe} names an unknown port"


def test_every_image_is_pinned(docs: tuple[Manifest, ...]) -> None:
    for workload in workloads(docs):
        for c in containers(pod_spec(workload)):
            assert PINNED.match(c["image"]), f"{c['image']}: pin a tag, never latest"
            assert c.get("imagePullPolicy") != "Always"


def test_no_service_account_token_unless_it_calls_the_api(docs: tuple[Manifest, ...]) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in find(docs, "ServiceAccount")}
    bound = {s["name"] for rb in find(docs, "RoleBinding") for s in rb["subjects"]}
    for workload in workloads(docs):
        spec = pod_spec(workload)
        account = spec.get("serviceAccountName")
        if account in bound:
            continue  # the controller: it patches Deployments and holds a Lease
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        if account is not None:
            assert accounts[account].get("automountServiceAccountToken") is False


def test_rbac_is_namespaced_named_and_without_wildcards(docs: tuple[Manifest, ...]) -> None:
    assert not find(docs, "ClusterRole")
    assert not find(docs, "ClusterRoleBinding")
    for role in find(docs, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: {rule}"
            # `create` cannot be limited by name (the name is unknown at authorization time).
            if set(rule["verbs"]) != {"create"}:
                assert rule.get("resourceNames"), f"unnamed {rule}"
            assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(
                rule["verbs"]
            )


def test_every_rbac_rule_says_why() -> None:
    text = (K8S / "base" / "controller" / "role.yaml").read_text().splitlines()
    rules = [i for i, line in enumerate(text) if line.strip().startswith("- apiGroups:")]
    assert rules
    for i in rules:
        assert text[i - 1].strip().startswith("#"), f"role.yaml line {i + 1}: no comment above"


def test_network_policies_deny_by_default_and_open_per_service(
    docs: tuple[Manifest, ...],
) -> None:
    policies = find(docs, "NetworkPolicy")
    deny = [p for p in policies if p["metadata"]["name"] == "default-deny"]
    assert deny
    assert deny[0]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    allows = [p for p in policies if p["spec"]["podSelector"]]
    for workload in workloads(docs):
        labels = pod_labels(workload)
        selecting = [p for p in allows if _selects(p["spec"]["podSelector"], labels)]
        assert selecting, f"{workload['metadata']['name']}: no NetworkPolicy opens anything"


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] != "In" or labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_every_pod_selector_of_a_disruption_budget_or_service_matches_pods(
    docs: tuple[Manifest, ...],
) -> None:
    pods = [pod_labels(w) for w in workloads(docs)]
    for kind in ("PodDisruptionBudget", "Service"):
        for obj in find(docs, kind):
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert any(all(p.get(k) == v for k, v in selector.items()) for p in pods), (
                f"{kind} {obj['metadata']['name']} selects no pod"
            )


def test_dev_holds_development_secrets_and_prod_holds_none() -> None:
    assert find(rendered("dev"), "Secret")
    assert not find(rendered("prod"), "Secret"), "prod credentials are created out of band"
