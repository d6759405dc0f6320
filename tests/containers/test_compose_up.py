"""`docker compose up` proven: docker-compose.yml as written, on the local engine.

One project per module, under a unique name and on free host ports (RECO_PUBLISH_*_PORT), so
that it never meets the dev stack or another run: Kafka, Redis, the S3 server and its bucket,
the seed, the trainer, the controller (target `local`), the worker, the API and the simulator.
The service-level checks go through the published ports only; the engine's own view (events,
``inspect``, ``exec``) shows that healthchecks and ``depends_on`` conditions ordered the start
and that the hardening of docker-compose.yml holds inside the running containers.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from reco_common.contracts import ActionType, UserAction
from reco_common.settings import KafkaSettings
from reco_devkit.observe import recommendations
from reco_devkit.traffic import ActionSender

# Generous bounds that only keep a broken run from hanging (the claims are in docs/deploy.md):
# from `up` to a worker with the first model (the trainer trains on 50,000 interactions), and
# from a user's action to that user's new list.
READY_BOUND_S = 900
LIST_BOUND_S = 60
DOCKER_SH = Path(__file__).resolve().parents[2] / "scripts" / "docker.sh"
PUBLISHED = ("KAFKA", "REDIS", "S3", "WORKER", "API")
OUR_SERVICES = ["controller", "worker", "api", "simulator"]
pytestmark = pytest.mark.timeout(READY_BOUND_S + 600)


@dataclass
class Project:
    """A compose project on the local engine, and what the engine said while it started."""

    name: str
    env: dict[str, str]
    ports: dict[str, int]
    events_file: Path
    config: dict[str, Any] = field(default_factory=dict)

    def compose(
        self, *args: str, timeout_s: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self._run([str(DOCKER_SH), "compose", "-p", self.name, *args], timeout_s, check)

    def docker(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return self._run([self.env["RECO_DOCKER"], *args], timeout_s, check=True)

    def _run(
        self, command: list[str], timeout_s: float, check: bool
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check:
            assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
        return done

    def container(self, service: str) -> str:
        ids = self.compose("ps", "--all", "--quiet", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(
            self.docker("inspect", self.container(service)).stdout
        )
        return found[0]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def events(self) -> list[dict[str, Any]]:
        lines = self.events_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def owned(self, kind: str) -> list[str]:
        """The engine's objects of ``kind`` (container, volume, network) of this project."""
        label = f"label=com.docker.compose.project={self.name}"
        listing = ["ps", "--all"] if kind == "container" else [kind, "ls"]
        return self.docker(*listing, "--quiet", "--filter", label).stdout.split()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _new_project(engine: dict[str, str], events_file: Path) -> Project:
    """A project of its own name on free host ports."""
    ports = {name: _free_port() for name in PUBLISHED}
    env = {
        **os.environ,
        **engine,
        **{f"RECO_PUBLISH_{name}_PORT": str(port) for name, port in ports.items()},
    }
    return Project(f"reco-test-{uuid.uuid4().hex[:8]}", env, ports, events_file)


@pytest.fixture(scope="module")
def project(engine: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = _new_project(engine, tmp_path_factory.mktemp("compose") / "events.jsonl")
    project.config = json.loads(project.compose("config", "--format", "json").stdout)
    # From now on (--since: nothing is missed while the watcher subscribes), this project's
    # containers only.
    since = str(int(time.time()) - 1)
    label = f"label=com.docker.compose.project={project.name}"
    watch = ["events", "--since", since, "--format", "{{json .}}", "--filter", label]
    with project.events_file.open("w") as sink:
        events = subprocess.Popen(
            [project.env["RECO_DOCKER"], *watch, "--filter", "type=container"],
            env=project.env,
            stdout=sink,
        )
    try:
        # No --build: `scripts/docker.sh images` built these images from the same Dockerfile.
        project.compose("up", "--detach", "--no-build", "--quiet-pull", timeout_s=READY_BOUND_S)
        _wait_until_ready(project)
        yield project
    finally:
        events.terminate()
        events.wait(timeout=30)
        project.compose("down", "--volumes", "--timeout", "30", timeout_s=300, check=False)


def _wait_until_ready(project: Project) -> None:
    """The worker's /readyz through its published port: the model is loaded, the consumer runs."""
    deadline = time.monotonic() + READY_BOUND_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{project.url('WORKER')}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    logs = project.compose("logs", "--tail", "30", timeout_s=60).stdout
    pytest.fail(f"the worker was not ready {READY_BOUND_S} s after `up`:\n{logs}")


async def _act(project: Project, user: str, item: str, action: ActionType) -> None:
    kafka = KafkaSettings(bootstrap=f"localhost:{project.ports['KAFKA']}")
    event = UserAction(
        event_id=f"{user}-{item}-{action.value}-{uuid.uuid4().hex[:6]}",
        user_id=user,
        item_id=item,
        action=action,
        ts=datetime.now(UTC),
    )
    async with ActionSender(kafka) as sender:
        await sender.send([event])


async def _listed(project: Project, user: str, *, unlike: str | None = None) -> dict[str, Any]:
    """``user``'s personalized list from the API, once it is computed (at a time other than
    ``unlike``)."""
    deadline = time.monotonic() + LIST_BOUND_S
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            listed = await recommendations(http, project.url("API"), user)
            if listed and listed["source"] == "personalized" and listed["computed_at"] != unlike:
                return listed
            await asyncio.sleep(0.5)
    pytest.fail(f"no new personalized list for {user} within {LIST_BOUND_S} s")


async def test_the_api_serves_personalized_lists_that_follow_actions_sent_to_kafka(
    project: Project,
) -> None:
    await _act(project, "u1", "i5", ActionType.VIEW)
    await _act(project, "u2", "i7", ActionType.VIEW)
    first, other = await _listed(project, "u1"), await _listed(project, "u2")
    top = first["items"][0]["item_id"]
    await _act(project, "u1", top, ActionType.PURCHASE)
    after = await _listed(project, "u1", unlike=first["computed_at"])

    assert len(first["items"]) == 10
    assert [i["item_id"] for i in first["items"]] != [i["item_id"] for i in other["items"]]
    assert top not in [i["item_id"] for i in after["items"]], "what u1 bought is not offered again"
    assert after["model_version"] == first["model_version"]


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_the_hardening_holds_inside_the_running_container(project: Project, service: str) -> None:
    container = project.container(service)
    status = project.docker("exec", container, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    write = project.docker(
        "exec", container, "python", "-c",
        "import errno\ntry: open('/probe', 'w')\nexcept OSError as e: print(errno.errorcode[e.errno])",
    ).stdout  # fmt: skip
    host = project.inspect(service)["HostConfig"]

    assert fields["Uid"].split()[:2] == ["10001", "10001"], "non-root, the image's numeric user"
    assert int(fields["CapEff"], 16) == 0, "no capability"
    assert int(fields["CapBnd"], 16) == 0, "none to gain either"
    assert fields["NoNewPrivs"].strip() == "1"
    assert write.strip() == "EROFS", "the root filesystem is read-only"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]


@pytest.mark.parametrize("service", ["controller", "worker", "api"])
def test_the_images_run_the_console_script_as_the_manifests_do(
    project: Project, service: str
) -> None:
    """PID 1 is the service's console script (ENTRYPOINT ["/app/service"]), not a shell."""
    container = project.container(service)
    cmdline = project.docker("exec", container, "cat", "/proc/1/cmdline").stdout.split("\0")
    target = project.docker("exec", container, "readlink", "/app/service").stdout.strip()

    assert cmdline[1] == "/app/service"
    assert Path(cmdline[0]).name.startswith("python")
    assert target == f"/app/.venv/bin/reco-{service}"


def test_healthchecks_and_depends_on_conditions_ordered_the_start(project: Project) -> None:
    """Every dependency was healthy (or had completed with 0) before its dependant started."""
    started: dict[str, float] = {}
    healthy: dict[str, float] = {}
    completed: dict[str, float] = {}
    for event in project.events():
        service = event["Actor"]["Attributes"].get("com.docker.compose.service")
        at = event["timeNano"] / 1e9
        if event["Action"] == "start":
            started.setdefault(service, at)
        elif event["Action"] == "health_status: healthy":
            healthy.setdefault(service, at)
        elif event["Action"] == "die" and event["Actor"]["Attributes"].get("exitCode") == "0":
            completed.setdefault(service, at)
    edges = [
        (name, dependency, condition["condition"])
        for name, service in project.config["services"].items()
        for dependency, condition in service.get("depends_on", {}).items()
    ]

    assert edges, "docker-compose.yml has dependencies"
    for name, dependency, condition in edges:
        ready = healthy if condition == "service_healthy" else completed
        assert dependency in ready, f"{dependency} never became {condition}"
        assert name in started, f"{name} never started"
        assert ready[dependency] <= started[name], (
            f"{name} started before {dependency}: {condition}"
        )
    for service in ("kafka", "redis", "s3", "worker", "controller", "api"):
        assert project.inspect(service)["State"]["Health"]["Status"] == "healthy", service
    for one_shot in ("s3-bucket", "shop-seed", "trainer"):
        assert project.inspect(one_shot)["State"]["ExitCode"] == 0, one_shot


def test_down_with_volumes_leaves_nothing_behind(project: Project) -> None:
    project.compose("down", "--volumes", "--timeout", "30", timeout_s=300)

    assert project.owned("container") == []
    assert project.owned("volume") == []
    assert project.owned("network") == []
    assert project.name not in project.compose("ls", "--all").stdout


def test_up_on_a_port_in_use_says_so_and_leaves_nothing_running(
    engine: dict[str, str], tmp_path: Path
) -> None:
    project = _new_project(engine, tmp_path / "events.jsonl")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", project.ports["REDIS"]))
        taken.listen()
        try:
            done = project.compose("up", "--detach", "--no-build", "redis", check=False)
            left = project.owned("container")
        finally:
            project.compose("down", "--volumes", check=False)

    assert done.returncode != 0
    assert str(project.ports["REDIS"]) in done.stderr, "the message names the port"
    assert "compose: `up --detach --no-build redis` failed" in done.stderr
    assert "docker.log" in done.stderr, "and the engine's log"
    assert left == []


def test_without_an_engine_a_command_names_the_component_and_its_log(tmp_path: Path) -> None:
    stack = tmp_path.resolve()
    done = subprocess.run(
        [str(DOCKER_SH), "compose", "ps"],
        env={**os.environ, "RECO_STACK_DIR": str(stack)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode != 0
    assert f"docker: the engine is not running on unix://{stack}/docker/docker.sock" in done.stderr
    assert f"log: {stack}/docker/docker.log" in done.stderr
