"""The manifests agree with the services: ports, probes, drain numbers, settings, RBAC names.

Numbers are read from the services' settings classes (defaults, overridden by the container's
environment as Kubernetes would set it), never written down again here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import typer
import yaml
from deploy_manifests import (
    OVERLAYS,
    REPO,
    Manifest,
    SecretSource,
    container,
    container_env,
    find,
    one,
    pod_labels,
    pod_spec,
    rendered,
    workloads,
)

from reco_api.settings import Settings as ApiSettings
from reco_common.contracts import MODEL_URI_ENV
from reco_common.kafka_access import Principal
from reco_controller.settings import Settings as ControllerSettings
from reco_trainer.cli import app as trainer_cli
from reco_trainer.settings import Settings as TrainerSettings
from reco_worker.settings import WorkerSettings

pytestmark = pytest.mark.usefixtures("has_kubectl")

SETTINGS: dict[str, type[Any]] = {
    "reco-api": ApiSettings,
    "reco-controller": ControllerSettings,
    "reco-trainer": TrainerSettings,
    "reco-worker": WorkerSettings,
}
# What docs/deploy.md tells an operator to put in the Secrets of prod (created out of band).
OUT_OF_BAND = {
    **{
        f"reco-s3-{s}": {"RECO_S3_ACCESS_KEY": f"AKIA-{s}", "RECO_S3_SECRET_KEY": f"{s}-secret"}
        for s in ("trainer", "controller", "worker")
    },
    "reco-worker": {"control-token": "operator-token"},
    "reco-api": {"api-keys": '["operator-key"]'},
    **{
        f"reco-kafka-{p}": {"password": f"operator-{p}-password"}
        for p in ("broker", "trainer", "controller", "worker", "shop")
    },
    "reco-kafka-keda": {"username": "reco-keda", "password": "operator-keda-password"},
}
FIELDS = {"metadata.namespace": "reco", "metadata.name": "pod-0"}
MARGIN_S = 5  # docs/api.md: grace ≥ preStop + RECO_API_SHUTDOWN_TIMEOUT_S + 5 s
LoadSettings = Callable[[type[Any], dict[str, str]], Any]


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Manifest, ...]:
    return rendered(request.param)


def _ours(docs: tuple[Manifest, ...]) -> list[tuple[Manifest, Manifest, type[Any]]]:
    found = []
    for workload in workloads(docs):
        for c in pod_spec(workload)["containers"]:
            image = c["image"].split("/")[-1].split(":")[0]
            if image in SETTINGS:
                found.append((workload, c, SETTINGS[image]))
    return found


def _settings(docs: tuple[Manifest, ...], c: Manifest, cls: type[Any], load: LoadSettings) -> Any:
    env = container_env(docs, c, secrets=SecretSource(docs, OUT_OF_BAND), fields=FIELDS)
    return load(cls, env)


def _backends(settings: Any) -> Any:
    return settings.common if isinstance(settings, WorkerSettings) else settings


def test_every_service_starts_with_its_environment(
    docs: tuple[Manifest, ...], settings_from: LoadSettings
) -> None:
    """The settings validate (RECO_ENV=prod refuses placeholders) and no backend is left at
    its loopback default."""
    ours = _ours(docs)
    assert {cls for _, _, cls in ours} == set(SETTINGS.values())
    for _, c, cls in ours:
        common = _backends(_settings(docs, c, cls, settings_from))
        for address in (common.kafka.bootstrap, common.redis.url, common.s3.endpoint_url):
            assert "127.0.0.1" not in address, (c["name"], address)
            assert "localhost" not in address, (c["name"], address)
        assert common.log_json is True


def test_the_backends_are_the_services_of_the_overlay(
    docs: tuple[Manifest, ...], settings_from: LoadSettings
) -> None:
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}
    ports = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in services.items()}
    for _, c, cls in _ours(docs):
        common = _backends(_settings(docs, c, cls, settings_from))
        host, port = common.kafka.bootstrap.split(":")
        assert int(port) in ports[host]
        redis = common.redis.url.removeprefix("redis://").split("/")[0].split(":")
        assert int(redis[1]) in ports[redis[0]]
        s3 = common.s3.endpoint_url.split("://")[1].split(":")
        if s3[0] in services:  # in-cluster S3 (dev); prod points outside
            assert int(s3[1]) in ports[s3[0]]


# --------------------------------------------------------------------------- api


def test_api_grace_period_covers_prestop_and_the_shutdown_bound(
    docs: tuple[Manifest, ...], settings_from: LoadSettings
) -> None:
    api = one(docs, "Deployment", "reco-api")
    c = container(api, "api")
    settings = _settings(docs, c, ApiSettings, settings_from).api
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod_spec(api)["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + settings.shutdown_timeout_s + MARGIN_S
    assert c.get("command") is None, "the image's exec entrypoint"
    assert c.get("args") is None
    assert settings.drain_s > 0


def test_api_probes_take_it_out_of_rotation_within_the_drain(
    docs: tuple[Manifest, ...], settings_from: LoadSettings
) -> None:
    api = one(docs, "Deployment", "reco-api")
    c = container(api, "api")
    settings = _settings(docs, c, ApiSettings, settings_from).api
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert ready["httpGet"]["path"] == "/readyz"
    assert live["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert port[ready["httpGet"]["port"]] == settings.port
    noticed_s = ready["periodSeconds"] * ready["failureThreshold"] + ready["timeoutSeconds"]
    assert noticed_s < settings.drain_s


def test_api_is_autoscaled_disruption_bounded_and_load_balanced(
    docs: tuple[Manifest, ...],
) -> None:
    api = one(docs, "Deployment", "reco-api")
    assert "replicas" not in api["spec"], "the HPA owns replicas: an apply must not reset them"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(docs, "HorizontalPodAutoscaler", "reco-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "reco-api",
    }
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget", "reco-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(api).items()
    service = one(docs, "Service", "reco-api")
    assert service["spec"]["type"] == "LoadBalancer"
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}


# --------------------------------------------------------------------------- worker


def test_worker_probes_match_its_endpoints(
    docs: tuple[Manifest, ...], settings_from: LoadSettings
) -> None:
    worker = one(docs, "Deployment", "worker-shop")
    c = container(worker, "worker")
    settings = _settings(docs, c, WorkerSettings, settings_from)
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert port[c[probe]["httpGet"]["port"]] == settings.http_port
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > settings.grace_s
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert any(str(settings.cache_dir).startswith(m) for m in mounts), "model cache is writable"


def test_worker_rolls_one_pod_at_a_time_and_keeps_serving(docs: tuple[Manifest, ...]) -> None:
    worker = one(docs, "Deployment", "worker-shop")
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert worker["spec"]["replicas"] >= 2
    pdb = one(docs, "PodDisruptionBudget", "worker-shop")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(worker).items()


def test_the_controller_owns_model_uri(docs: tuple[Manifest, ...]) -> None:
    """Not in the manifests at all: a later `kubectl apply` cannot reset the rolled-out model."""
    worker = one(docs, "Deployment", "worker-shop")
    for c in pod_spec(worker)["containers"]:
        names = {v["name"] for v in c.get("env", [])}
        assert not {MODEL_URI_ENV, "RECO_WORKER_MODEL_URI"} & names
        assert all(MODEL_URI_ENV not in json.dumps(src) for src in c.get("envFrom", []))
    for config in find(docs, "ConfigMap"):
        assert MODEL_URI_ENV not in config.get("data", {})
    assert not any(k.startswith("reco.dev/") for k in worker["metadata"].get("annotations", {}))


# --------------------------------------------------------------------------- controller


def test_controller_targets_exactly_the_worker_deployments(
    docs: tuple[Manifest, ...], settings_from: LoadSettings
) -> None:
    controller = one(docs, "Deployment", "reco-controller")
    c = container(controller, "controller")
    settings = _settings(docs, c, ControllerSettings, settings_from).controller
    role = one(docs, "Role", "reco-controller")
    (deployments_rule,) = [r for r in role["rules"] if r["resources"] == ["deployments"]]
    workers = {
        d["metadata"]["name"]
        for d in find(docs, "Deployment")
        if pod_labels(d).get("app.kubernetes.io/name") == "reco-worker"
    }
    assert set(settings.deployments.values()) == set(deployments_rule["resourceNames"]) == workers
    for name in workers:
        names = {x["name"] for x in pod_spec(one(docs, "Deployment", name))["containers"]}
        assert settings.container in names
    lease_rules = [
        r for r in role["rules"] if r.get("resourceNames") and r["resources"] == ["leases"]
    ]
    assert [settings.lease_name] == lease_rules[0]["resourceNames"]
    assert pod_spec(controller)["terminationGracePeriodSeconds"] > settings.grace_s
    assert controller["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget", "reco-controller")["spec"]["minAvailable"] == 1


def test_a_stuck_worker_rollout_is_reported_by_kubernetes_first(
    docs: tuple[Manifest, ...], settings_from: LoadSettings
) -> None:
    c = container(one(docs, "Deployment", "reco-controller"), "controller")
    settings = _settings(docs, c, ControllerSettings, settings_from).controller
    for name in settings.deployments.values():
        deadline = one(docs, "Deployment", name)["spec"]["progressDeadlineSeconds"]
        assert deadline < settings.rollout_timeout_s


# --------------------------------------------------------------------------- trainer


def test_trainer_cronjob_runs_once_at_a_time_on_the_training_pool(
    docs: tuple[Manifest, ...], settings_from: LoadSettings
) -> None:
    cron = one(docs, "CronJob", "reco-trainer")
    spec, job = cron["spec"], cron["spec"]["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert job["activeDeadlineSeconds"] > 0
    assert 0 <= job["backoffLimit"] <= 3
    assert job["ttlSecondsAfterFinished"] > 0
    exit_2 = job["podFailurePolicy"]["rules"][0]
    assert exit_2["action"] == "FailJob"
    assert exit_2["onExitCodes"]["values"] == [2]
    pod = pod_spec(cron)
    assert pod["restartPolicy"] == "Never"
    c = container(cron, "trainer")
    assert c["args"] == ["run"]
    assert "run" in typer.main.get_group(trainer_cli).commands
    settings = _settings(docs, c, TrainerSettings, settings_from)
    assert settings.trainer.store_uri.startswith("s3://")
    threads, cpus = settings.trainer.params.threads, c["resources"]["requests"]["cpu"]
    # unset: the trainer counts the CPUs of the limit (its cgroup quota), at most the request
    assert (threads or float(c["resources"]["limits"]["cpu"])) <= float(cpus)
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (expr,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
    pool = {(expr["key"], v) for v in expr["values"]}
    tolerated = {(t["key"], t.get("value")) for t in pod["tolerations"]}
    assert pool <= tolerated, "the training pool's taint is tolerated"
    nodes = [d for d in yaml.safe_load_all((REPO / "scripts/kube/nodes.yaml").read_text()) if d]
    assert any(pool & set(n["metadata"]["labels"].items()) for n in nodes), (
        "a node of the local control plane carries the training pool's label"
    )


# --------------------------------------------------------------------------- kafka


def test_kafka_is_a_kraft_statefulset_with_a_headless_service_and_volumes(
    docs: tuple[Manifest, ...],
) -> None:
    kafka = one(docs, "StatefulSet", "kafka")
    headless = one(docs, "Service", kafka["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert kafka["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    c = container(kafka, "kafka")
    env = container_env(docs, c, secrets=SecretSource(docs, OUT_OF_BAND), fields=_kafka_fields())
    assert "ZOOKEEPER" not in json.dumps(env)
    # Every listener authenticates and the ACLs are enforced (docs/security.md, "Kafka").
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(protocols.values()) == {"SASL_PLAINTEXT"}
    assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert env["KAFKA_SUPER_USERS"] == "User:reco-kafka"
    assert "StandardAuthorizer" in env["KAFKA_AUTHORIZER_CLASS_NAME"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    replicas = kafka["spec"]["replicas"]
    service = headless["metadata"]["name"]
    assert voters == [f"{i}@kafka-{i}.{service}:9093" for i in range(replicas)]
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) <= replicas
    assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) <= int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"])
    assert env["KAFKA_LOG_DIRS"].startswith(
        next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "data")
    )


def test_the_access_job_has_a_password_for_every_user_it_creates(
    docs: tuple[Manifest, ...],
) -> None:
    """The Job kafka-access makes a SCRAM user per principal of its acls.txt, with the password
    in ``PASSWORD_<principal without reco->`` (it stops on an unset one); in dev, the local
    stack's password (scripts/stack.sh)."""
    (job,) = find(docs, "Job", "kafka-access")
    acls = one(docs, "ConfigMap", _acls_config_map(job))["data"]["acls.txt"]
    users = {line.split()[0] for line in acls.splitlines() if line and not line.startswith("#")}
    assert users == {p.value for p in Principal}
    env = container_env(
        docs, container(job, "access"), secrets=SecretSource(docs, OUT_OF_BAND), fields=FIELDS
    )
    for user in users:
        password = env[f"PASSWORD_{user.removeprefix('reco-').upper()}"]
        if find(docs, "Secret"):  # dev: the generated Secrets
            assert password == Principal(user).dev_password


def _acls_config_map(job: Manifest) -> str:
    (volume,) = [v for v in pod_spec(job)["volumes"] if v["name"] == "acls"]
    name: str = volume["configMap"]["name"]
    return name


def _kafka_fields() -> dict[str, str]:
    return {"metadata.labels['apps.kubernetes.io/pod-index']": "0", "metadata.name": "kafka-0"}


def test_overlays_differ_only_where_documented() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    assert one(dev, "StatefulSet", "kafka")["spec"]["replicas"] == 1
    assert one(prod, "StatefulSet", "kafka")["spec"]["replicas"] == 3
    assert find(dev, "Deployment", "s3")
    assert not find(prod, "Deployment", "s3")
    assert one(dev, "ConfigMap", "reco-config")["data"]["RECO_ENV"] == "dev"
    assert one(prod, "ConfigMap", "reco-config")["data"]["RECO_ENV"] == "prod"


def test_stack_versions_match_the_local_dev_stack() -> None:
    """The images run the versions the tests run against (scripts/stack.sh)."""
    stack = (REPO / "scripts" / "stack.sh").read_text()
    images = {c["image"] for w in workloads(rendered("dev")) for c in pod_spec(w)["containers"]}
    kafka = stack.split('KAFKA_VERSION="${RECO_KAFKA_VERSION:-')[1].split("}")[0]
    versity = stack.split('VERSITYGW_VERSION="${RECO_VERSITYGW_VERSION:-')[1].split("}")[0]
    assert f"apache/kafka:{kafka}" in images
    assert f"versity/versitygw:{versity}" in images
