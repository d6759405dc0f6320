"""The Kafka access matrix and the client's authentication settings (docs/security.md, "Kafka")."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from reco_common.contracts import Topics
from reco_common.kafka_access import Principal, grants, render
from reco_common.settings import CommonSettings, KafkaSecurity, KafkaSettings

REPO = Path(__file__).resolve().parents[3]
RENDERED = [REPO / "scripts/stack/kafka/acls.txt", REPO / "deploy/k8s/base/kafka/acls.txt"]


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: str(p.relative_to(REPO)))
def test_the_applied_files_are_the_matrix(path: Path) -> None:
    """What scripts/stack.sh and the Job kafka-access apply is reco_common.kafka_access's."""
    assert path.read_text() == render(Topics()), f"regenerate {path} from render(Topics())"


def test_only_the_trainer_may_announce_and_only_the_worker_dead_letters_actions() -> None:
    topics = Topics("stg-")
    writers = {g.name: g.principal for g in grants(topics) if "Write" in g.operations}
    assert writers[topics.model_published] is Principal.TRAINER
    assert writers[Topics.dlq(topics.user_actions)] is Principal.WORKER
    assert writers[topics.user_actions] is Principal.SHOP
    assert writers[topics.rollout_events] is Principal.CONTROLLER
    assert all(g.name.startswith("stg-") for g in grants(topics))
    assert not any(g.operations for g in grants(topics) if "Delete" in g.operations)


def test_keda_may_only_describe_the_actions_and_the_workers_groups() -> None:
    """The lag reader's grants: what the lag needs (metadata, end offsets, a group's committed
    offsets), nothing that reads an action, joins or commits for a group, or produces."""
    topics = Topics("stg-")
    keda = {
        (g.resource, g.name, g.prefixed, g.operations)
        for g in grants(topics)
        if g.principal is Principal.KEDA
    }
    assert keda == {
        ("topic", topics.user_actions, False, ("Describe",)),
        ("group", "stg-worker-", True, ("Describe",)),
    }


def test_sasl_needs_a_username_and_a_password() -> None:
    with pytest.raises(ValidationError, match="RECO_KAFKA_USERNAME and RECO_KAFKA_PASSWORD"):
        KafkaSettings(security_protocol=KafkaSecurity.SASL_PLAINTEXT, username="reco-worker")
    kafka = KafkaSettings(
        security_protocol=KafkaSecurity.SASL_PLAINTEXT, username="reco-worker", password="pw"
    )
    assert kafka.client_options() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "reco-worker",
        "sasl_plain_password": "pw",
    }
    tls = KafkaSettings(security_protocol=KafkaSecurity.SASL_SSL, username="u", password="pw")
    assert "ssl_context" in tls.client_options()


def test_outside_dev_a_service_authenticates_with_a_real_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECO_ENV", "prod")
    monkeypatch.setenv("RECO_S3_SECRET_KEY", "a-real-one")
    for name in ("SECURITY_PROTOCOL", "USERNAME", "PASSWORD"):
        monkeypatch.delenv(f"RECO_KAFKA_{name}", raising=False)
    with pytest.raises(ValidationError, match="RECO_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"):
        CommonSettings()
    monkeypatch.setenv("RECO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECO_KAFKA_USERNAME", "reco-worker")
    monkeypatch.setenv("RECO_KAFKA_PASSWORD", Principal.WORKER.dev_password)
    with pytest.raises(ValidationError, match="RECO_KAFKA_PASSWORD is a development placeholder"):
        CommonSettings()
    monkeypatch.setenv("RECO_KAFKA_PASSWORD", "a-real-kafka-password")
    assert CommonSettings().kafka.security_protocol is KafkaSecurity.SASL_SSL
