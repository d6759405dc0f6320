"""The README's two commands from a clean clone, as a new user runs them: no uv on the PATH.

The clone gets the machine's environment (CA bundles and the like) with a fresh ``HOME`` and a PATH of the system directories only, so the Makefile must
bootstrap its own pinned uv (into a fresh ``RECO_TOOLS_DIR``). The documented caches are reused
so that nothing is downloaded twice: ``UV_CACHE_DIR`` and ``PIP_CACHE_DIR`` (Python packages),
``RECO_CACHE_DIR`` (Kafka jars, built servers) and ``RECO_STACK_DIR`` (the dev stack that already
runs for this session; ``make`` starts it idempotently). ``make test`` runs whole (lint, type
checks, the stack and the control plane), its pytest narrowed to one module: running the whole
suite again from inside itself would never end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _machine_environment() -> dict[str, str]:
    """The machine's own settings (CA bundles, proxies, locale) without what this run added."""
    ours = ("UV_", "VIRTUAL_ENV", "PYTEST_", "RECO_", "PYTHON")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


def _cache(variable: str, default: Path) -> str:
    return os.environ.get(variable) or str(default)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if shutil.which("uv", path=SYSTEM_PATH):
        pytest.fail(
            f"uv is installed system-wide ({shutil.which('uv', path=SYSTEM_PATH)}): "
            "this test could not tell whether the Makefile bootstraps it"
        )
    root = tmp_path_factory.mktemp("front-door")
    checkout = root / "reco"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(checkout)], check=True, timeout=120)
    home = Path.home()
    env = {
        **_machine_environment(),
        "HOME": str(root / "home"),
        "PATH": SYSTEM_PATH,
        "UV_CACHE_DIR": _cache("UV_CACHE_DIR", home / ".cache" / "uv"),
        "PIP_CACHE_DIR": _cache("PIP_CACHE_DIR", home / ".cache" / "pip"),
        "RECO_CACHE_DIR": _cache("RECO_CACHE_DIR", home / ".cache" / "reco"),
        "RECO_STACK_DIR": _cache("RECO_STACK_DIR", REPO / ".stack"),
        "RECO_TOOLS_DIR": str(root / "tools"),
    }
    (root / "home").mkdir()
    return checkout, env


def _make(checkout: Path, env: dict[str, str], *args: str, timeout: int) -> str:
    done = subprocess.run(
        ["make", *args],
        cwd=checkout,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout
    assert done.returncode == 0, (
        f"make {' '.join(args)} exited {done.returncode}:\n{output[-6000:]}"
    )
    return output


@pytest.mark.timeout(900)
def test_make_demo_from_a_clean_clone(clone: tuple[Path, dict[str, str]]) -> None:
    checkout, env = clone
    output = _make(
        checkout,
        env,
        "demo",
        "DEMO_ARGS=--no-wait --plain --duration 8 --after 3 --interactions 20000",
        timeout=840,
    )
    assert "[bootstrap] installing uv" in output
    assert (Path(env["RECO_TOOLS_DIR"]) / "uv-0.13.9" / "bin" / "uv").exists()
    assert "succeeded" in output, output[-4000:]


@pytest.mark.timeout(900)
def test_make_test_from_a_clean_clone(clone: tuple[Path, dict[str, str]]) -> None:
    checkout, env = clone
    output = _make(
        checkout,
        env,
        "test",
        "PYTEST_PATHS=tests/unit/test_architecture.py",
        timeout=840,
    )
    summary = [line for line in output.splitlines() if line.startswith("=") and " in " in line]
    assert summary, output[-3000:]
    assert " passed" in summary[-1], output[-3000:]
    assert "failed" not in summary[-1], output[-3000:]
