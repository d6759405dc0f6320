"""The container tier: docker-compose.yml brought up for real on the local engine.

Once per session: the engine (``scripts/docker.sh up``, idempotent) and every image
(``scripts/docker.sh images``: the local substitutes and the four services, from the build cache
once built). The tests talk to the project only through its published ports, and to the engine
for what only it can tell (``docker inspect``, ``docker exec``, its events).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER_SH = REPO / "scripts" / "docker.sh"
# Cold, the images take a while to build on a small machine (docs/deploy.md has the figures).
IMAGES_TIMEOUT_S = 3600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/containers/" in str(item.fspath):
            item.add_marker(pytest.mark.containers)


@pytest.fixture(scope="session")
def engine() -> dict[str, str]:
    """The engine up and the images built; the environment ``scripts/docker.sh env`` gives."""
    subprocess.run([str(DOCKER_SH), "up"], check=True, timeout=600)
    subprocess.run([str(DOCKER_SH), "images"], check=True, timeout=IMAGES_TIMEOUT_S)
    exports = subprocess.run(
        [str(DOCKER_SH), "env"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in exports.splitlines()
    )
