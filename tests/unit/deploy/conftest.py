"""Deploy tests that only read files: rendered manifests, Dockerfiles, the compose file."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from deploy_manifests import kubectl

from reco_common.contracts import MODEL_URI_ENV
from reco_common.settings import load_settings

LoadSettings = Callable[[type[Any], Mapping[str, str]], Any]


@pytest.fixture(scope="session")
def has_kubectl() -> None:
    if kubectl() is None:
        pytest.skip("no kubectl to render with: run `scripts/kube.sh build` or install kubectl")


@pytest.fixture
def settings_from(monkeypatch: pytest.MonkeyPatch) -> LoadSettings:
    """Build a service's settings from exactly ``env`` (nothing inherited from the test run)."""

    def load(cls: type[Any], env: Mapping[str, str]) -> Any:
        with monkeypatch.context() as patch:
            for name in list(os.environ):
                if name.startswith("RECO_") or name == MODEL_URI_ENV:
                    patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            return load_settings(cls)

    return load
