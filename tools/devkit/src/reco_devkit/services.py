"""The platform's services for one isolated run on local processes: names, environments, starts.

A :class:`RunSpace` is one run's world: a directory (logs, the embedded ``file://`` model store,
worker caches), a topic prefix and a Redis key prefix of its own, so that runs (the demo, each
end-to-end test) share the dev stack's servers without seeing each other's data. Every service
gets its settings through the environment, exactly as its container would (docs/<service>.md),
and runs as its console script under :class:`reco_devkit.procs.ServiceProcess`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from reco_common.contracts import MODEL_URI_ENV
from reco_common.kafka_access import Principal
from reco_common.settings import CommonSettings, KafkaSecurity, KafkaSettings, RedisSettings
from reco_devkit.procs import ServiceProcess, console_script, free_port

logger = logging.getLogger(__name__)

MODEL_NAME: Final = "shop"
# The workers' model-control token in these local runs (RECO_ENV=dev accepts any value).
CONTROL_TOKEN: Final = "devkit-local-token"
# What a reader of the workers' /v1/model presents (reads need the token too).
CONTROL_HEADERS: Final = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
LOCALHOST: Final = "127.0.0.1"


@dataclass(frozen=True)
class RunSpace:
    """One run's directory and namespaces on the shared Kafka and Redis.

    ``backends`` holds the servers' addresses, read from the ``RECO_*`` environment (the dev
    stack's defaults otherwise); the run's own prefixes are added on top. With
    ``sasl_bootstrap`` (the dev stack's SASL/SCRAM listener) each service connects to Kafka as
    its own principal (:mod:`reco_common.kafka_access`, development passwords) instead of
    through the anonymous development listener, which the run's own tools keep using.
    """

    root: Path
    run_id: str
    model_name: str = MODEL_NAME
    backends: CommonSettings = field(default_factory=CommonSettings)
    sasl_bootstrap: str | None = None

    @classmethod
    def create(
        cls,
        parent: Path,
        *,
        label: str,
        backends: CommonSettings | None = None,
        sasl_bootstrap: str | None = None,
    ) -> RunSpace:
        run_id = f"{label}-{uuid.uuid4().hex[:8]}"
        root = parent.resolve() / run_id
        (root / "logs").mkdir(parents=True, exist_ok=True)
        backends = backends or CommonSettings()
        return cls(root=root, run_id=run_id, backends=backends, sasl_bootstrap=sasl_bootstrap)

    def sibling(self, label: str) -> RunSpace:
        """A fresh space next to this one, on the same servers (e.g. for a clean replay)."""
        return RunSpace.create(
            self.root.parent,
            label=label,
            backends=self.backends,
            sasl_bootstrap=self.sasl_bootstrap,
        )

    @property
    def topic_prefix(self) -> str:
        return f"{self.run_id}-"

    @property
    def key_prefix(self) -> str:
        return self.run_id

    @property
    def store_uri(self) -> str:
        """The embedded ``file://`` object store of this run (models and topic snapshots)."""
        return (self.root / "store").as_uri()

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def kafka(self) -> KafkaSettings:
        return self.backends.kafka.model_copy(
            update={"topic_prefix": self.topic_prefix, "client_id": self.run_id}
        )

    @property
    def redis(self) -> RedisSettings:
        return self.backends.redis.model_copy(update={"key_prefix": self.key_prefix})

    def kafka_as(self, principal: Principal) -> KafkaSettings:
        """The run's Kafka settings as ``principal`` (the development listener without SASL)."""
        kafka = self.kafka
        if self.sasl_bootstrap is None:
            return kafka
        return as_principal(kafka, principal, bootstrap=self.sasl_bootstrap)

    def env(self, principal: Principal | None = None) -> dict[str, str]:
        """The shared settings every service of this run gets; ``principal`` is the service's
        Kafka principal (``None``: the service never talks to Kafka)."""
        env = {
            "RECO_ENV": "dev",
            "RECO_KAFKA_BOOTSTRAP": self.backends.kafka.bootstrap,
            "RECO_KAFKA_TOPIC_PREFIX": self.topic_prefix,
            "RECO_REDIS_URL": self.backends.redis.url,
            "RECO_REDIS_KEY_PREFIX": self.key_prefix,
        }
        if self.sasl_bootstrap is not None and principal is not None:
            credentials = _credentials(self.sasl_bootstrap, principal)
            env |= {f"RECO_KAFKA_{name.upper()}": value for name, value in credentials.items()}
        return env


def as_principal(
    kafka: KafkaSettings, principal: Principal, *, bootstrap: str, password: str | None = None
) -> KafkaSettings:
    """``kafka`` on the SASL listener ``bootstrap`` as ``principal``, with its development
    password unless ``password`` is given."""
    credentials = _credentials(bootstrap, principal)
    if password is not None:
        credentials["password"] = password
    return KafkaSettings.model_validate(kafka.model_dump() | credentials)


def _credentials(bootstrap: str, principal: Principal) -> dict[str, str]:
    return {
        "bootstrap": bootstrap,
        "security_protocol": KafkaSecurity.SASL_PLAINTEXT.value,
        "username": principal.value,
        "password": principal.dev_password,
    }


def _prefixed(prefix: str, settings: Mapping[str, str]) -> dict[str, str]:
    return {f"{prefix}{name.upper()}": value for name, value in settings.items()}


def worker(
    space: RunSpace, *, index: int, model_uri: str | None = None, **settings: str
) -> ServiceProcess:
    """``reco-worker`` number ``index``; without ``model_uri`` it waits for the controller.

    ``settings`` are ``RECO_WORKER_*`` overrides by lower-case name (e.g. ``max_batch="50"``).
    """
    port = free_port()
    base = f"http://{LOCALHOST}:{port}"
    env = space.env(Principal.WORKER) | {
        "RECO_WORKER_HTTP_HOST": LOCALHOST,
        "RECO_WORKER_HTTP_PORT": str(port),
        "RECO_WORKER_CACHE_DIR": str(space.root / "cache" / f"worker-{index}"),
        "RECO_WORKER_CONTROL_TOKEN": CONTROL_TOKEN,
    }
    if model_uri is not None:
        env[MODEL_URI_ENV] = model_uri
    return ServiceProcess(
        name=f"worker-{index}",
        argv=[console_script("reco-worker")],
        env=env | _prefixed("RECO_WORKER_", settings),
        log_path=space.logs / f"worker-{index}.log",
        ready_url=f"{base}/readyz",
        base_url=base,
    )


def _controller(space: RunSpace, name: str, env: dict[str, str]) -> ServiceProcess:
    port = free_port()
    base = f"http://{LOCALHOST}:{port}"
    common = {
        # Consumer groups are cluster-wide: the run's own, or it would share another run's offsets.
        "RECO_CONTROLLER_GROUP_ID": f"{space.run_id}-controller",
        "RECO_CONTROLLER_IDENTITY": f"{space.run_id}-controller",
        "RECO_CONTROLLER_HEALTH_HOST": LOCALHOST,
        "RECO_CONTROLLER_HEALTH_PORT": str(port),
        "RECO_CONTROLLER_POLL_INTERVAL_S": "0.2",
    }
    return ServiceProcess(
        name=name,
        argv=[console_script("reco-controller"), "run"],
        env=space.env(Principal.CONTROLLER) | common | env,
        log_path=space.logs / f"{name}.log",
        ready_url=f"{base}/readyz",
        base_url=base,
    )


def local_controller(
    space: RunSpace, workers: Sequence[ServiceProcess], **settings: str
) -> ServiceProcess:
    """``reco-controller run`` with the ``local`` target: it rolls ``workers`` over HTTP."""
    urls = [w.base_url for w in workers if w.base_url is not None]
    env = {
        "RECO_CONTROLLER_TARGET": "local",
        "RECO_CONTROLLER_WORKER_URLS": json.dumps({space.model_name: urls}),
        "RECO_CONTROLLER_WORKER_TOKEN": CONTROL_TOKEN,
    }
    return _controller(space, "controller", env | _prefixed("RECO_CONTROLLER_", settings))


def kubernetes_controller(
    space: RunSpace, *, kubeconfig: Path, namespace: str, deployment: str, **settings: str
) -> ServiceProcess:
    """``reco-controller run`` with the ``kubernetes`` target, rolling ``deployment``."""
    env = {
        "RECO_CONTROLLER_TARGET": "kubernetes",
        "RECO_CONTROLLER_KUBECONFIG": str(kubeconfig),
        "RECO_CONTROLLER_NAMESPACE": namespace,
        "RECO_CONTROLLER_DEPLOYMENTS": json.dumps({space.model_name: deployment}),
        "RECO_CONTROLLER_LEASE_NAME": f"{space.run_id}-controller",
    }
    return _controller(space, "controller", env | _prefixed("RECO_CONTROLLER_", settings))


def api(
    space: RunSpace, *, port: int | None = None, name: str = "api", **settings: str
) -> ServiceProcess:
    """``reco-api`` serving this run's model by default (on ``port``, or any free one; its
    internal port, ``/metrics`` and ``/docs``, on another free one: ``ops_url``); ``name``
    names its log (``logs/<name>.log``) when a run has more than one."""
    port = port or free_port()
    base = f"http://{LOCALHOST}:{port}"
    ops_port = free_port()
    env = space.env() | {
        "RECO_API_HOST": LOCALHOST,
        "RECO_API_PORT": str(port),
        "RECO_API_OPS_HOST": LOCALHOST,
        "RECO_API_OPS_PORT": str(ops_port),
        "RECO_API_DEFAULT_MODEL": space.model_name,
    }
    return ServiceProcess(
        name=name,
        argv=[console_script("reco-api")],
        env=env | _prefixed("RECO_API_", settings),
        log_path=space.logs / f"{name}.log",
        ready_url=f"{base}/readyz",
        base_url=base,
        ops_url=f"http://{LOCALHOST}:{ops_port}",
    )


def _trainer_env(space: RunSpace, settings: Mapping[str, str]) -> dict[str, str]:
    return (
        space.env(Principal.TRAINER)
        | {
            "RECO_TRAINER_MODEL_NAME": space.model_name,
            "RECO_TRAINER_STORE_URI": space.store_uri,
        }
        | _prefixed("RECO_TRAINER_", settings)
    )


def train(
    space: RunSpace,
    *,
    interactions: str,
    item_features: str | None = None,
    publish: bool = True,
    log_name: str = "trainer-train",
    **settings: str,
) -> ServiceProcess:
    """``reco-trainer train`` on files into the run's store (started; ``wait`` for it).

    ``settings`` are ``RECO_TRAINER_*`` overrides, e.g. ``params__epochs="10"``.
    """
    argv = [console_script("reco-trainer"), "train", "--interactions", interactions]
    if item_features is not None:
        argv += ["--item-features", item_features]
    argv.append("--publish" if publish else "--no-publish")
    return ServiceProcess(
        name=log_name,
        argv=argv,
        env=_trainer_env(space, settings),
        log_path=space.logs / f"{log_name}.log",
    )


def retrain(
    space: RunSpace,
    *,
    base_interactions: Sequence[str],
    item_features: str | None = None,
    log_name: str = "trainer-run",
    **settings: str,
) -> ServiceProcess:
    """``reco-trainer run``, the CronJob: archive the topic snapshot, train on it plus the base
    files, publish (started; ``wait`` for it)."""
    extra = {"base_interactions": json.dumps(list(base_interactions))}
    if item_features is not None:
        extra["item_features"] = item_features
    return ServiceProcess(
        name=log_name,
        argv=[console_script("reco-trainer"), "run"],
        env=_trainer_env(space, extra | dict(settings)),
        log_path=space.logs / f"{log_name}.log",
    )
