"""Who may do what on Kafka: one principal per service (and KEDA's), the ACLs of each.

The access matrix of docs/security.md, in one place. Each service authenticates with SASL/SCRAM
as its own principal (``RECO_KAFKA_USERNAME``) and may produce and consume only its own topics:

- ``reco-trainer`` produces ``model-published``; reads ``user-actions`` (the archive snapshot,
  without a consumer group);
- ``reco-controller`` consumes ``model-published`` (its group), produces ``rollout-events`` and
  the dead letters of ``model-published``;
- ``reco-worker`` consumes ``user-actions`` (groups ``worker-<model>``, and the group-less
  rebuild read) and produces the dead letters of ``user-actions``;
- ``reco-shop`` produces ``user-actions``: the site's event collector (the simulator and
  ``reco-trainer synth --to-kafka`` in development);
- ``reco-keda`` reads the workers' consumer lag for KEDA (deploy/k8s/components/elastic-workers)
  and nothing else: ``Describe`` on ``user-actions`` (metadata, end offsets) and on the
  ``worker-*`` groups (their committed offsets); no Read, Write or Create, so it can neither
  read an action, join or commit for a group, nor produce;
- the API has no principal: it never talks to Kafka.

Each service's principal may also create the topics it uses (``ensure_topics``: whichever
process starts first creates a topic with the contract's partition count), never alter or
delete one.

The dev stack (scripts/stack.sh) and the Kubernetes provisioning Job apply
:func:`render` ``(Topics())`` as written to ``scripts/stack/kafka/acls.txt`` and
``deploy/k8s/base/kafka/acls.txt``; a unit test keeps both equal to it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from reco_common.contracts import Topics

# Consumer groups, namespaced like the topics: the controller's, and every worker's prefix
# (one group per model: ``worker-<model>``).
CONTROLLER_GROUP: Final = "controller"
WORKER_GROUP_PREFIX: Final = "worker-"
DEV_PASSWORD_SUFFIX: Final = "-dev-secret"


class Principal(enum.StrEnum):
    """The SCRAM user names, as Kafka sees them (``User:<name>``)."""

    TRAINER = "reco-trainer"
    CONTROLLER = "reco-controller"
    WORKER = "reco-worker"
    SHOP = "reco-shop"
    KEDA = "reco-keda"

    @property
    def dev_password(self) -> str:
        """The local stack's password of this principal (a placeholder, refused outside dev)."""
        return f"{self.value}{DEV_PASSWORD_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Grant:
    """``operations`` on one resource (``topic`` or ``group``), by literal name or prefix."""

    principal: Principal
    operations: tuple[str, ...]
    resource: str
    name: str
    prefixed: bool = False

    def line(self) -> str:
        pattern = "prefixed" if self.prefixed else "literal"
        ops = ",".join(self.operations)
        return f"{self.principal.value} {ops} {self.resource} {pattern} {self.name}"


_READ = ("Read", "Describe", "Create")
_WRITE = ("Write", "Describe", "Create")
_GROUP = ("Read", "Describe")
# What a lag reader needs: Metadata and ListOffsets (Describe on the topic), FindCoordinator and
# OffsetFetch (Describe on the group).
_LAG = ("Describe",)


def grants(topics: Topics) -> list[Grant]:
    """Every ACL of the matrix for the topics (and groups) of ``topics``' namespace."""
    dlq = Topics.dlq
    prefix = topics.prefix
    return [
        Grant(Principal.TRAINER, _WRITE, "topic", topics.model_published),
        Grant(Principal.TRAINER, _READ, "topic", topics.user_actions),
        Grant(Principal.CONTROLLER, _READ, "topic", topics.model_published),
        Grant(Principal.CONTROLLER, _GROUP, "group", f"{prefix}{CONTROLLER_GROUP}"),
        Grant(Principal.CONTROLLER, _WRITE, "topic", topics.rollout_events),
        Grant(Principal.CONTROLLER, _WRITE, "topic", dlq(topics.model_published)),
        Grant(Principal.WORKER, _READ, "topic", topics.user_actions),
        Grant(Principal.WORKER, _GROUP, "group", f"{prefix}{WORKER_GROUP_PREFIX}", prefixed=True),
        Grant(Principal.WORKER, _WRITE, "topic", dlq(topics.user_actions)),
        Grant(Principal.SHOP, _WRITE, "topic", topics.user_actions),
        Grant(Principal.KEDA, _LAG, "topic", topics.user_actions),
        Grant(Principal.KEDA, _LAG, "group", f"{prefix}{WORKER_GROUP_PREFIX}", prefixed=True),
    ]


def render(topics: Topics) -> str:
    """The grants as the lines ``principal operations resource pattern name`` that
    scripts/stack.sh and the provisioning Job read (``#`` starts a comment)."""
    header = (
        "# Generated from reco_common.kafka_access (a unit test keeps it equal): one ACL per\n"
        "# line, `principal operations resource pattern name`, all ALLOW, any host.\n"
    )
    return header + "".join(f"{g.line()}\n" for g in grants(topics))
