"""The house rules that keep the monorepo a set of independent services."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ["trainer", "controller", "worker", "api"]


def test_no_service_imports_another_and_the_library_imports_none() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_library_has_no_entry_points() -> None:
    project = tomllib.loads((REPO / "libs/common/pyproject.toml").read_text())["project"]
    assert "scripts" not in project
    assert "gui-scripts" not in project


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_a_package_with_its_own_command(service: str) -> None:
    project = tomllib.loads((REPO / f"services/{service}/pyproject.toml").read_text())["project"]
    assert project["name"] == f"reco-{service}"
    assert project["scripts"] == {f"reco-{service}": f"reco_{service}.__main__:main"}
