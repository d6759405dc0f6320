"""The real-node overlay: the dev overlay pinned to the real node of scripts/node.sh, with the
images it can run (loaded from `make images`: no registry) and CPU requests that fit it."""

from __future__ import annotations

import re

import pytest
from deploy_manifests import REPO, Manifest, container, pod_spec, rendered, workloads

pytestmark = pytest.mark.usefixtures("has_kubectl")

NODE_SH = (REPO / "scripts" / "node.sh").read_text()
TAINT = {"key": "reco.dev/node", "operator": "Equal", "value": "real", "effect": "NoSchedule"}
NODE_CPUS = 2  # the machine's cores: the node's allocatable CPU


def _millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def test_every_pod_lands_on_the_real_node_and_only_there() -> None:
    # The node registers with this label and taint (scripts/node.sh): kwok's nodes have neither.
    assert "reco.dev/node=real" in NODE_SH
    assert "{key: reco.dev/node, value: real, effect: NoSchedule}" in NODE_SH
    for workload in workloads(rendered("real-node")):
        spec = pod_spec(workload)
        assert spec["nodeSelector"] == {"reco.dev/node": "real"}, workload["metadata"]["name"]
        assert TAINT in spec["tolerations"], workload["metadata"]["name"]


def test_the_trainer_keeps_its_training_pool() -> None:
    (cron,) = [w for w in workloads(rendered("real-node")) if w["kind"] == "CronJob"]
    spec = pod_spec(cron)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert (
        terms
        == pod_spec(_dev_cronjob())["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
    )
    assert "reco.dev/pool=training" in NODE_SH  # the node's own label satisfies it


def _dev_cronjob() -> Manifest:
    (cron,) = [w for w in workloads(rendered("dev")) if w["kind"] == "CronJob"]
    return cron


def test_every_image_is_one_that_make_images_builds() -> None:
    local = re.compile(r"^(reco-(api|controller|trainer|worker):[\d.]+|reco-local/[\w-]+:[\w.-]+)$")
    for workload in workloads(rendered("real-node")):
        spec = pod_spec(workload)
        for c in spec["containers"] + spec.get("initContainers", []):
            assert local.match(c["image"]), c["image"]


def test_the_cpu_requests_fit_the_node_during_a_rollout_and_a_training() -> None:
    """Every pod, plus a surge pod of each Deployment being rolled, plus a training."""
    total = 0
    for workload in workloads(rendered("real-node")):
        spec = pod_spec(workload)
        pod = sum(_millicores(c["resources"]["requests"]["cpu"]) for c in spec["containers"])
        if workload["kind"] in ("CronJob", "Job"):  # one pod at a time
            total += pod
            continue
        replicas = workload["spec"].get("replicas", 2)  # the API's: the HPA's minimum
        surge = 1 if workload["kind"] == "Deployment" else 0
        total += pod * (replicas + surge)
    assert total <= NODE_CPUS * 1000, f"{total}m requested"  # the node reserves nothing


def test_only_requests_differ_from_dev_besides_placement_and_images() -> None:
    dev = {(w["kind"], w["metadata"]["name"]): w for w in workloads(rendered("dev"))}
    for workload in workloads(rendered("real-node")):
        before = dev[(workload["kind"], workload["metadata"]["name"])]
        for c in pod_spec(workload)["containers"]:
            original = container(before, c["name"])
            assert c["resources"]["limits"] == original["resources"]["limits"]
            assert c.get("readinessProbe") == original.get("readinessProbe")
            assert c.get("startupProbe") == original.get("startupProbe")
