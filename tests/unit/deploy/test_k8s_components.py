"""The optional components: the GPU trainer agrees with its example node pool, and the
monitoring component scrapes real Services and charts metrics the services really export."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from deploy_manifests import K8S, container, find, one, pod_spec, rendered
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from reco_api.metrics import ApiMetrics, HttpMetrics
from reco_common.metrics import ConsumerMetrics
from reco_controller.metrics import ControllerMetrics
from reco_worker.metrics import WorkerMetrics

pytestmark = pytest.mark.usefixtures("has_kubectl")

MONITORING = K8S / "components" / "monitoring"
METRIC = re.compile(r"\breco_[a-z0-9_]+")


def test_gpu_trainer_requests_a_gpu_on_the_training_pool() -> None:
    base = one(rendered("prod"), "CronJob", "reco-trainer")
    gpu = one(rendered("prod", ("gpu-trainer",)), "CronJob", "reco-trainer")
    limits = container(gpu, "trainer")["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert (
        container(gpu, "trainer")["resources"]["limits"]["cpu"]
        == (container(base, "trainer")["resources"]["limits"]["cpu"])
    )
    assert pod_spec(gpu)["affinity"] == pod_spec(base)["affinity"], "still the training pool"


def test_the_example_node_pool_provides_what_the_gpu_trainer_selects_and_tolerates() -> None:
    pool = yaml.safe_load((K8S / "components/gpu-trainer/karpenter-nodepool.yaml").read_text())
    template = pool["spec"]["template"]
    labels, taints = template["metadata"]["labels"], template["spec"]["taints"]
    pod = pod_spec(one(rendered("prod", ("gpu-trainer",)), "CronJob", "reco-trainer"))
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    for expr in terms["nodeSelectorTerms"][0]["matchExpressions"]:
        assert labels[expr["key"]] in expr["values"]
    for taint in taints:
        assert any(
            t["key"] == taint["key"]
            and t["effect"] == taint["effect"]
            and (t["operator"] == "Exists" or t.get("value") == taint.get("value"))
            for t in pod["tolerations"]
        ), taint
    assert "nvidia.com/gpu" in pool["spec"]["limits"]


def test_every_service_monitor_scrapes_a_named_port_of_a_service() -> None:
    docs = rendered("prod", ("monitoring",))
    services = find(docs, "Service")
    monitors = find(docs, "ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {
        "reco-api",
        "reco-worker",
        "reco-controller",
    }
    for monitor in monitors:
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
        assert matched, f"{monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            for service in matched:
                assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_prometheus_may_reach_every_scraped_port() -> None:
    """Each ServiceMonitor endpoint, followed to the container port behind it, is opened."""
    docs = rendered("prod", ("monitoring",))
    policy = one(docs, "NetworkPolicy", "allow-prometheus")
    opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    services = find(docs, "Service")
    for monitor in find(docs, "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        for service in (s for s in services if wanted.items() <= s["metadata"]["labels"].items()):
            deployment = next(
                d
                for d in find(docs, "Deployment")
                if service["spec"]["selector"].items()
                <= d["spec"]["template"]["metadata"]["labels"].items()
            )
            named = {
                p["name"]: p["containerPort"]
                for c in pod_spec(deployment)["containers"]
                for p in c["ports"]
            }
            targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                assert named[targets[endpoint["port"]]] in opened, monitor["metadata"]["name"]


def test_the_apis_metrics_and_docs_are_not_on_its_public_service() -> None:
    """The LoadBalancer exposes the API's public port only; /metrics and /docs are served on
    the internal port, which only the ClusterIP Service reco-api-ops names."""
    docs = rendered("prod", ("monitoring",))
    public = one(docs, "Service", "reco-api")
    internal = one(docs, "Service", "reco-api-ops")
    assert public["spec"]["type"] == "LoadBalancer"
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    assert internal["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in internal["spec"]["ports"]] == ["ops"]
    monitor = one(docs, "ServiceMonitor", "reco-api")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["ops"]


def _exported() -> set[str]:
    """Every series name the services register (histograms as _bucket/_sum/_count)."""
    WorkerMetrics.create()
    ControllerMetrics.create()
    ConsumerMetrics.for_service("controller")
    api = CollectorRegistry()
    ApiMetrics.create(api)
    HttpMetrics.create(api)
    names: set[str] = set()
    for registry in (REGISTRY, api):
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                # the exposition names counters with their _total already
                suffixes = ["_bucket", "_sum", "_count"] if kind == "histogram" else [""]
                names.update(name + s for s in suffixes)
    return names


def test_the_dashboard_charts_only_metrics_the_services_export() -> None:
    dashboard = json.loads((MONITORING / "dashboards" / "reco.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used, "the dashboard charts something"
    assert used <= _exported(), sorted(used - _exported())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("events", "freshness", "lag", "latency", "fallback", "rollouts"):
        assert topic in titles


def test_the_alerts_use_only_metrics_the_services_export() -> None:
    (rules,) = find(rendered("prod", ("monitoring",)), "PrometheusRule")
    exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used, "the alerts watch something"
    assert used <= _exported(), sorted(used - _exported())


def test_the_dashboard_ships_as_a_grafana_config_map() -> None:
    (config,) = [
        c
        for c in find(rendered("prod", ("monitoring",)), "ConfigMap")
        if c["metadata"]["name"].startswith("reco-grafana-dashboard")
    ]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["reco.json"])["uid"] == "reco-platform"
