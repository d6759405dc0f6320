"""checkov over what users deploy: the rendered overlays (with every component) and the
Dockerfiles (the services' template and the local substitutes). It runs from PyPI in a throwaway environment (`uvx`), never in the workspace lock;
.checkov.yaml holds the global skips, each with its reason, and the resource-specific skips are
`checkov.io/skipN` annotations on the resources."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from deploy_manifests import COMPONENTS, OVERLAYS, REPO, rendered

CHECKOV = "checkov==3.3.30"


def _reports(output: str) -> list[dict[str, Any]]:
    """checkov prints one JSON document per scanned directory (an object or a list)."""
    decoder, reports, rest = json.JSONDecoder(), [], output.strip()
    while rest:
        doc, end = decoder.raw_decode(rest)
        reports += doc if isinstance(doc, list) else [doc]
        rest = rest[end:].strip()
    return reports


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    uvx = shutil.which("uvx")
    if uvx is None:
        pytest.skip("uvx (uv) is needed to run checkov in its own environment")
    root = tmp_path_factory.mktemp("checkov")
    variants = [(o, ()) for o in OVERLAYS] + [("prod", COMPONENTS)]
    for overlay, components in variants:
        name = "-".join((overlay, *components))
        (root / f"{name}.yaml").write_text(yaml.safe_dump_all(rendered(overlay, components)))
    for dockerfile in [REPO / "services" / "Dockerfile", *REPO.glob("deploy/docker/*/Dockerfile")]:
        target = root / "docker" / dockerfile.parent.name / "Dockerfile"
        target.parent.mkdir(parents=True)
        shutil.copy2(dockerfile, target)
    done = subprocess.run(
        [
            uvx,
            "--from",
            CHECKOV,
            "checkov",
            "--config-file",
            str(REPO / ".checkov.yaml"),
            "-d",
            str(root),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    return _reports(done.stdout)


def test_checkov_leaves_no_failed_check(scanned: list[dict[str, Any]]) -> None:
    assert {r["check_type"] for r in scanned} == {"kubernetes", "dockerfile"}
    for report in scanned:
        failed = [(f["check_id"], f["resource"]) for f in report["results"]["failed_checks"]]
        assert failed == [], failed
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 0


def test_every_resource_specific_skip_gives_its_reason(scanned: list[dict[str, Any]]) -> None:
    skipped = sum(r["summary"]["skipped"] for r in scanned)
    annotations = [
        (d["metadata"]["name"], key, value)
        for overlay in OVERLAYS
        for d in rendered(overlay)
        for key, value in d["metadata"].get("annotations", {}).items()
        if key.startswith("checkov.io/skip")
    ]
    assert skipped > 0
    assert annotations
    for name, key, value in annotations:
        check, _, reason = value.partition("=")
        assert check.startswith("CKV_"), (name, key)
        assert len(reason.split()) >= 4, f"{name} {key}: say why"


def test_every_global_skip_gives_its_reason() -> None:
    lines = (REPO / ".checkov.yaml").read_text().splitlines()
    config = yaml.safe_load("\n".join(lines))
    assert config["skip-check"]
    for check in config["skip-check"]:
        at = lines.index(f"  - {check}")
        assert lines[at - 1].strip().startswith("#"), f"{check}: no reason above it"
