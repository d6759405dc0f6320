"""docker-compose.yml without a Docker engine: parsed, interpolated as Compose does, and checked
against the services' settings, ports, Dockerfiles and the .env example."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import typer
import yaml

from reco_api.settings import Settings as ApiSettings
from reco_controller.settings import Settings as ControllerSettings
from reco_controller.settings import TargetKind
from reco_trainer.cli import app as trainer_cli
from reco_trainer.settings import Settings as TrainerSettings
from reco_worker.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[3]
COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<plain>\w+)")
SETTINGS: dict[str, type[Any]] = {
    "reco-api": ApiSettings,
    "reco-controller": ControllerSettings,
    "reco-trainer": TrainerSettings,
    "reco-worker": WorkerSettings,
}
LoadSettings = Callable[[type[Any], Mapping[str, str]], Any]


def env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR?err}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name = match["name"] or match["plain"]
        op, arg = match["op"], match["arg"]
        present = name in env and (env[name] != "" or op not in (":-", ":?"))
        if present:
            return env[name]
        if op in (":-", "-"):
            return str(arg)
        raise KeyError(f"${{{name}}} is not set and has no default")

    parts = value.split("$$")
    return "$".join(VARIABLE.sub(one, part) for part in parts)


def compose(env: Mapping[str, str]) -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    return {k: v for k, v in interpolate(doc, env).items() if not k.startswith("x-")}


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return compose(env_example())


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def template_args() -> dict[str, str]:
    """The base-image build arguments of services/Dockerfile, with their defaults."""
    lines = (REPO / "services" / "Dockerfile").read_text().splitlines()
    pairs = (line.removeprefix("ARG ").split("=", 1) for line in lines if line.startswith("ARG "))
    return {name: default for name, default in (p for p in pairs if len(p) == 2)}


def _image_name(service: Mapping[str, Any]) -> str:
    return str(service["image"]).rsplit(":", 1)[0]


def _one_shot(service: Mapping[str, Any]) -> bool:
    return service.get("restart") == "no"


def test_the_env_example_defaults_are_the_compose_defaults() -> None:
    """Without a .env the file means the same as with the example copied to .env."""
    text = COMPOSE.read_text()
    used = {m["name"] or m["plain"] for m in VARIABLE.finditer(text.replace("$$", ""))}
    assert used == set(env_example()), "every variable is in .env.example, and no other"
    assert compose({}) == compose(env_example())


def test_every_image_is_pinned_and_ours_are_built_from_their_dockerfile(
    project: dict[str, Any],
) -> None:
    for name, service in project["services"].items():
        image = service["image"]
        assert re.match(r"^[\w./-]+:[\w.-]+$", image), f"{name}: {image}"
        assert not image.endswith(":latest")
        if _image_name(service) in SETTINGS:
            assert service["build"] == {
                "context": ".",
                "dockerfile": "services/Dockerfile",
                "args": {**template_args(), "SERVICE": _image_name(service).removeprefix("reco-")},
            }
            assert service["read_only"] is True
            assert service["cap_drop"] == ["ALL"]
            assert "/tmp" in service["tmpfs"]


def test_long_running_services_have_healthchecks_and_conditions_are_satisfiable(
    project: dict[str, Any],
) -> None:
    services = project["services"]
    for name, service in services.items():
        healthcheck = service.get("healthcheck")
        assert _one_shot(service) or healthcheck or _is_loop(service), f"{name}: no healthcheck"
        if healthcheck:
            assert healthcheck["test"][0] == "CMD", f"{name}: exec form"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            else:
                assert wanted == "service_completed_successfully"
                assert _one_shot(services[dependency]), f"{dependency} never completes"
    _assert_acyclic(services)


def _is_loop(service: Mapping[str, Any]) -> bool:
    """The simulator and the scheduled trainer: shell loops that have no port to check."""
    return service.get("entrypoint") == ["/bin/sh", "-c"]


def _assert_acyclic(services: Mapping[str, Any]) -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dependency in services[name].get("depends_on", {}):
                visit(dependency, (*path, name))
            done.add(name)

    for name in services:
        visit(name, ())


def test_every_service_starts_with_its_environment(
    project: dict[str, Any], settings_from: LoadSettings
) -> None:
    """Each service's settings validate, and every backend is a compose service, never the
    loopback default (which inside a container is the container itself)."""
    services = project["services"]
    seen = set()
    for name, service in services.items():
        cls = SETTINGS.get(_image_name(service))
        if cls is None:
            continue
        seen.add(cls)
        settings = settings_from(cls, _environment(service))
        common = settings.common if isinstance(settings, WorkerSettings) else settings
        kafka_host = common.kafka.bootstrap.split(":")[0]
        redis_host = urlparse(common.redis.url).hostname
        s3_host = urlparse(common.s3.endpoint_url).hostname
        assert {kafka_host, redis_host, s3_host} <= set(services), name
    assert seen == set(SETTINGS.values())


def test_kafka_advertises_what_the_services_bootstrap_from(project: dict[str, Any]) -> None:
    services = project["services"]
    kafka = _environment(services["kafka"])
    advertised = dict(
        reversed(listener.split("://"))
        for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    bootstrap = _environment(services["worker"])["RECO_KAFKA_BOOTSTRAP"]
    assert bootstrap in advertised, "the containers' listener"
    assert "localhost:9092" in advertised, "the host's listener, where scripts/stack.sh has it"
    assert "127.0.0.1:9092:9092" in services["kafka"]["ports"]


def test_kafka_advertises_the_port_it_is_published_on() -> None:
    """Moved beside a running dev stack, the host's clients still find the broker."""
    kafka = compose({**env_example(), "RECO_PUBLISH_KAFKA_PORT": "19999"})["services"]["kafka"]
    assert "EXTERNAL://localhost:19999" in _environment(kafka)["KAFKA_ADVERTISED_LISTENERS"]
    assert "127.0.0.1:19999:9092" in kafka["ports"]


def test_the_s3_server_serves_the_bucket_the_trainer_writes(project: dict[str, Any]) -> None:
    services = project["services"]
    s3 = services["s3"]
    command = s3["command"]
    listen = command[command.index("--port") + 1]
    health = command[command.index("--health") + 1]
    root = command[command.index("posix") + 1]
    endpoint = urlparse(_environment(services["worker"])["RECO_S3_ENDPOINT_URL"])
    assert (endpoint.hostname, f":{endpoint.port}") == ("s3", listen)
    assert health in " ".join(s3["healthcheck"]["test"])
    bucket = urlparse(_environment(services["trainer"])["RECO_TRAINER_STORE_URI"]).netloc
    assert services["s3-bucket"]["entrypoint"] == ["mkdir", "-p", f"{root}/{bucket}"]
    assert s3["depends_on"]["s3-bucket"] == {"condition": "service_completed_successfully"}
    assert (
        _environment(s3)["ROOT_ACCESS_KEY"]
        == _environment(services["worker"])["RECO_S3_ACCESS_KEY"]
    )
    assert "127.0.0.1:9000:7070" in s3["ports"], "where scripts/stack.sh has the S3 server"


def test_the_controller_reaches_the_worker_with_its_token(
    project: dict[str, Any], settings_from: LoadSettings
) -> None:
    services = project["services"]
    controller = settings_from(ControllerSettings, _environment(services["controller"]))
    worker = settings_from(WorkerSettings, _environment(services["worker"]))
    assert controller.controller.target is TargetKind.LOCAL
    urls = [u for urls in controller.controller.worker_urls.values() for u in urls]
    assert {(u.host, u.port) for u in urls} == {("worker", worker.http_port)}
    assert controller.controller.worker_token == worker.control_token
    assert f":{worker.http_port}/healthz" in " ".join(services["worker"]["healthcheck"]["test"])
    health = f":{controller.controller.health_port}/readyz"
    assert health in " ".join(services["controller"]["healthcheck"]["test"])


def test_the_api_serves_the_model_on_localhost_and_drains_before_sigkill(
    project: dict[str, Any], settings_from: LoadSettings
) -> None:
    api = project["services"]["api"]
    settings = settings_from(ApiSettings, _environment(api)).api
    assert f"127.0.0.1:{settings.port}:{settings.port}" in api["ports"]
    assert f":{settings.port}/readyz" in " ".join(api["healthcheck"]["test"])
    assert _seconds(api["stop_grace_period"]) > settings.shutdown_timeout_s
    trainer = settings_from(TrainerSettings, _environment(project["services"]["trainer"]))
    assert settings.default_model == trainer.trainer.model_name


def _seconds(duration: str) -> float:
    assert duration.endswith("s")
    return float(duration.removesuffix("s"))


def test_the_trainer_commands_exist(project: dict[str, Any]) -> None:
    commands = typer.main.get_group(trainer_cli).commands
    services = project["services"]
    assert services["trainer"]["command"] == ["run"]
    assert services["shop-seed"]["command"][:2] == ["synth", "--to-kafka"]
    for loop in ("simulator", "trainer-schedule"):
        script = services[loop]["command"][0]
        for command in re.findall(r"reco-trainer (\w+)", script):
            assert command in commands
    assert services["trainer-schedule"]["profiles"] == ["schedule"]
    assert "synth" in commands
