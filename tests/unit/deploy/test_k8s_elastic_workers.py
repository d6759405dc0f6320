"""The elastic-workers component: KEDA scales each worker Deployment on its own group's lag.

The ScaledObject's names and numbers are checked against what the worker really does: its
settings built from the container's rendered environment (the group id, the topic, the SASL
mechanism, the bootstrap), and the partition count of the contract. KEDA reads the lag as its own
principal, reco-keda (Describe only), never with the worker's credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from deploy_manifests import (
    Manifest,
    SecretSource,
    container,
    container_env,
    find,
    one,
    pod_labels,
    rendered,
)

from reco_common.contracts import PARTITIONS, Topics
from reco_common.kafka_access import Principal
from reco_worker.settings import WorkerSettings

pytestmark = pytest.mark.usefixtures("has_kubectl")

COMPONENT = ("elastic-workers",)
FIELDS = {"metadata.namespace": "reco", "metadata.name": "pod-0"}
KEDA_SASL = {"SCRAM-SHA-512": "scram_sha512", "SCRAM-SHA-256": "scram_sha256"}
LoadSettings = Callable[[type[Any], dict[str, str]], Any]


@pytest.fixture(params=["dev", "prod"])
def docs(request: pytest.FixtureRequest) -> tuple[Manifest, ...]:
    return rendered(request.param, COMPONENT)


def _scaled(docs: tuple[Manifest, ...]) -> list[tuple[Manifest, Manifest]]:
    """Each ScaledObject with the Deployment it scales."""
    return [
        (s, one(docs, "Deployment", s["spec"]["scaleTargetRef"]["name"]))
        for s in find(docs, "ScaledObject")
    ]


def _trigger(scaled: Manifest) -> Manifest:
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    return trigger


def test_every_worker_deployment_is_scaled_and_no_other(docs: tuple[Manifest, ...]) -> None:
    workers = {
        d["metadata"]["name"]
        for d in find(docs, "Deployment")
        if pod_labels(d).get("app.kubernetes.io/name") == "reco-worker"
    }
    assert workers
    assert {d["metadata"]["name"] for _, d in _scaled(docs)} == workers
    for scaled, _ in _scaled(docs):
        assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"


def test_the_hpa_owns_the_replicas_within_the_partition_count(docs: tuple[Manifest, ...]) -> None:
    topic = Topics().user_actions
    for scaled, deployment in _scaled(docs):
        assert "replicas" not in deployment["spec"], "an apply must not reset what KEDA chose"
        spec = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"] <= PARTITIONS[topic]
        assert _trigger(scaled)["metadata"]["allowIdleConsumers"] == "false"
        assert spec["fallback"]["replicas"] == spec["minReplicaCount"]
        assert spec["fallback"]["behavior"] == "currentReplicasIfHigher", "no scale-down blind"
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        # A rebalance stops the group for seconds: lag it piles up must not scale by itself.
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] >= 30
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 120


def test_the_trigger_reads_the_group_the_worker_consumes_in(
    settings_from: LoadSettings,
) -> None:
    docs = rendered("dev", COMPONENT)  # its Secrets are rendered: the whole environment
    for scaled, deployment in _scaled(docs):
        name = scaled["spec"]["scaleTargetRef"]["envSourceContainerName"]
        env = container_env(
            docs, container(deployment, name), secrets=SecretSource(docs, {}), fields=FIELDS
        )
        settings: WorkerSettings = settings_from(WorkerSettings, env)
        kafka = settings.common.kafka
        meta = _trigger(scaled)["metadata"]
        model = pod_labels(deployment)["reco.dev/model"]
        assert meta["consumerGroup"] == settings.group_id(model)
        assert meta["topic"] == kafka.topics.user_actions
        assert env[meta["bootstrapServersFromEnv"]] == kafka.bootstrap
        assert meta["sasl"] == KEDA_SASL[kafka.sasl_mechanism]
        assert meta["tls"] == ("enable" if "SSL" in kafka.security_protocol.value else "disable")
        assert meta["offsetResetPolicy"] == "earliest"
        assert int(meta["lagThreshold"]) > 0


def _auth(docs: tuple[Manifest, ...], scaled: Manifest) -> Manifest:
    name = _trigger(scaled)["authenticationRef"]["name"]
    auth: Manifest = one(docs, "TriggerAuthentication", name)["spec"]
    return auth


def test_keda_reads_the_lag_as_its_own_principal(docs: tuple[Manifest, ...]) -> None:
    """Not as the worker (which may read every action and commit the group's offsets): the
    Secret of reco-keda, whose SCRAM user the Job kafka-access creates with that password."""
    (job,) = find(docs, "Job", "kafka-access")
    access = {e["name"]: e.get("valueFrom") for e in container(job, "access")["env"]}
    for scaled, _ in _scaled(docs):
        auth = _auth(docs, scaled)
        assert set(auth) == {"secretTargetRef"}, "no credential from the worker's environment"
        refs = {
            r["parameter"]: {"name": r["name"], "key": r["key"]} for r in auth["secretTargetRef"]
        }
        assert set(refs) == {"username", "password"}
        assert refs["password"] == access["PASSWORD_KEDA"]["secretKeyRef"]
        assert refs["username"]["name"] == refs["password"]["name"]


def test_the_dev_credentials_are_the_local_stack_s() -> None:
    docs = rendered("dev", COMPONENT)
    secrets = SecretSource(docs, {})
    for scaled, _ in _scaled(docs):
        credentials = {
            r["parameter"]: secrets.data(r["name"])[r["key"]]
            for r in _auth(docs, scaled)["secretTargetRef"]
        }
        assert credentials == {
            "username": Principal.KEDA.value,
            "password": Principal.KEDA.dev_password,
        }


def test_the_kafka_protocol_version_is_the_brokers_major(docs: tuple[Manifest, ...]) -> None:
    kafka = one(docs, "StatefulSet", "kafka")
    image = container(kafka, "kafka")["image"]
    major = image.rsplit(":", 1)[1].split(".")[0]
    for scaled, _ in _scaled(docs):
        assert _trigger(scaled)["metadata"]["version"] == f"{major}.0.0"


def test_keda_may_reach_the_brokers_client_port(docs: tuple[Manifest, ...]) -> None:
    policy = one(docs, "NetworkPolicy", "allow-keda-to-kafka")
    kafka = one(docs, "StatefulSet", "kafka")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(kafka).items()
    client = {p["name"]: p["containerPort"] for p in container(kafka, "kafka")["ports"]}["kafka"]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [client]
    (source,) = rule["from"]
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}
