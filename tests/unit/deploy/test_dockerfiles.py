"""The Dockerfiles: one template for the four services (services/Dockerfile, the service a
build argument) and the local substitutes of third-party images (deploy/docker/*): hadolint-
clean, built the house way, and buildable from the context.

Without an engine the build is checked in parts (tests/containers builds and runs the images for
real): hadolint lints each file; the build context is computed from .dockerignore; the files each
COPY takes are copied from that context into a scratch directory, and the `uv sync` commands of
the template run there exactly as written for each service (with --dry-run --offline), which
proves the context holds what `--locked` needs, the lock is in step with every manifest, and the
console script is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SERVICES = ("api", "controller", "trainer", "worker")
HADOLINT = Path(sys.executable).with_name("hadolint")
TEMPLATE = REPO / "services" / "Dockerfile"
DOCKERFILES = [TEMPLATE, *sorted(REPO.glob("deploy/docker/*/Dockerfile"))]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(dockerfile: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line.removesuffix(chr(92)).strip()}".strip()
        if not line.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip()))
            pending = ""
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each stage; the global ARGs before the first FROM are left out."""
    found: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        name, _, default = instruction.args.partition("=")
        args[name] = default
    return args


def for_service(instructions: list[Instruction], service: str) -> list[Instruction]:
    """The template as Docker reads it with ``--build-arg SERVICE=<service>``."""
    return [Instruction(i.keyword, i.args.replace("${SERVICE}", service)) for i in instructions]


def workspace_members() -> list[str]:
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = []
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        members += [str(p.parent.relative_to(REPO)) for p in REPO.glob(f"{pattern}/pyproject.toml")]
    return sorted(members)


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore syntax (moby/patternmatcher): * within a segment, ** across."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"^{out}$")


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the context: the last pattern that matches the
    path or one of its parent directories decides."""
    parents = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.match(p) for p in parents):
            excluded = not negated
    return excluded


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def context_files() -> list[str]:
    """The repository's files (tracked and untracked, not git-ignored) Docker would send."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    patterns = dockerignore()
    return [f for f in listed if (REPO / f).is_file() and not ignored(f, patterns)]


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    done = subprocess.run(
        [str(HADOLINT), "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(done.stdout or "[]") == [], done.stdout + done.stderr


def test_the_context_holds_no_secret_state_or_tests() -> None:
    patterns = dockerignore()
    for path in (".env", ".git/config", ".stack/kube/pki/ca.key", ".venv/bin/python", "var/x",
                 "tests/conftest.py", "deploy/k8s/base/kustomization.yaml", "docs/api.md",
                 "deploy/docker/kafka/Dockerfile", "services/Dockerfile",
                 "services/api/src/reco_api/__pycache__/app.cpython-311.pyc"):  # fmt: skip
        assert ignored(path, patterns), path
    for path in ("uv.lock", "pyproject.toml", "libs/common/src/reco_common/contracts.py"):
        assert not ignored(path, patterns), path


def test_there_is_one_dockerfile_for_the_services() -> None:
    assert sorted(REPO.glob("services/*/Dockerfile")) == []
    assert TEMPLATE.is_file()


def test_the_base_images_are_pinned_build_arguments() -> None:
    instructions = parse(TEMPLATE)
    args = global_args(instructions)
    froms = [s[0].args.split()[0] for s in stages(instructions)]
    assert froms == ["${UV_IMAGE}", "${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    for image in args.values():
        assert re.match(r"^[\w./-]+:[\w.-]+$", image), f"{image}: pin the tag"
        assert not image.endswith(":latest")
    python = (REPO / ".python-version").read_text().strip()
    assert args["PYTHON_IMAGE"].startswith(f"python:{python}.")
    assert args["PYTHON_IMAGE"].endswith("-slim-bookworm")
    assert args["UV_IMAGE"].startswith("ghcr.io/astral-sh/uv:")


@pytest.mark.parametrize("service", SERVICES)
def test_the_image_is_built_the_house_way(service: str) -> None:
    *build, runtime = stages(for_service(parse(TEMPLATE), service))
    copies = [i.args for s in build for i in s if i.keyword == "COPY"]
    for member in workspace_members():
        assert f"{member}/pyproject.toml {member}/" in copies, f"the lock layer lacks {member}"
    assert f"services/{service}/ services/{service}/" in copies
    syncs = [i.args for s in build for i in s if i.keyword == "RUN" and "uv sync" in i.args]
    assert len(syncs) == 2
    assert f'--no-install-workspace --package "reco-{service}"' in syncs[0]
    assert "--no-editable" in syncs[1]
    assert all("--locked" in s and "--no-dev" in s for s in syncs)
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users == ["10001:10001"], "a numeric non-root user (runAsNonRoot can verify it)"
    entry = [i.args for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entry == [json.dumps(["/app/service"])], "exec form: SIGTERM reaches Python"
    link = f'ln -s "/app/.venv/bin/reco-{service}" /app/service'
    assert link in syncs[1], "/app/service is the service's console script"
    scripts = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())
    assert f"reco-{service}" in scripts["project"]["scripts"]
    text = TEMPLATE.read_text()
    assert "recoadmin" not in text, "no credentials in an image"
    assert not re.search(r"(?im)^\s*(ENV|ARG)\s+\S*(SECRET|PASSWORD|TOKEN|_KEY)\b", text)


@pytest.mark.parametrize("service", SERVICES)
def test_the_build_steps_work_on_the_context(service: str, tmp_path: Path) -> None:
    """Replay the build stage's COPY and `uv sync` steps on the filtered context."""
    context = set(context_files())
    build = stages(for_service(parse(TEMPLATE), service))[-2]
    workdir = tmp_path / "src"
    # The machine's uv settings (its cache above all: --offline) minus the active virtualenv;
    # the Dockerfile's ENV lines then set the build's own, with paths moved under tmp_path.
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    ran = 0
    for instruction in build:
        if instruction.keyword == "WORKDIR":
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "ENV":
            for assignment in shlex.split(instruction.args):
                name, _, value = assignment.partition("=")
                env[name] = str(tmp_path / value.lstrip("/")) if value.startswith("/") else value
        elif instruction.keyword == "COPY" and "--from" not in instruction.args:
            *sources, dest = instruction.args.split()
            for source in sources:
                _copy(source, dest, context=context, workdir=workdir)
        elif instruction.keyword == "RUN" and "uv sync" in instruction.args:
            command = shlex.split(instruction.args[instruction.args.index("uv sync") :])
            command = command[: command.index("&&")] if "&&" in command else command
            done = subprocess.run(
                [*command, "--dry-run", "--offline"],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, f"{' '.join(command)}:\n{done.stderr}"
            ran += 1
    assert ran == 2
    assert f"reco-{service}" in done.stderr, "the last step installs the service itself"


def _copy(source: str, dest: str, *, context: set[str], workdir: Path) -> None:
    source = source.rstrip("/")
    matched = [f for f in context if f == source or f.startswith(f"{source}/")]
    assert matched, f"COPY {source}: nothing in the build context"
    for file in matched:
        relative = Path(file).name if file == source else Path(file).relative_to(source)
        target = (
            workdir / dest / relative if dest.endswith("/") or file != source else workdir / dest
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / file, target)
