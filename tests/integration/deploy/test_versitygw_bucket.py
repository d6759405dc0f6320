"""What the compose file (`s3-bucket`) and the dev overlay (the `bucket` init container) rely
on: VersityGW's posix backend serves a directory created before it starts as a bucket. Checked
on the same VersityGW build the dev stack runs (scripts/stack.sh caches it)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_manifests import REPO, pod_spec, rendered

from reco_common.settings import S3Settings
from reco_common.storage import open_store
from reco_devkit.procs import ServiceProcess, free_port

CACHE = Path(os.environ.get("RECO_CACHE_DIR", Path.home() / ".cache" / "reco"))


@pytest.fixture
def versitygw(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    binary = CACHE / "bin" / "versitygw"
    if not binary.exists():
        pytest.skip("scripts/stack.sh has not built VersityGW here (it fell back to moto)")
    data = tmp_path / "data"
    bucket = _bucket_command()
    subprocess.run([*bucket[:-1], str(data / Path(bucket[-1]).name)], check=True)
    port = free_port()
    process = ServiceProcess(
        name="versitygw",
        argv=[
            str(binary),
            "--port",
            f"127.0.0.1:{port}",
            "--health",
            "/health",
            "posix",
            str(data),
        ],
        env={"ROOT_ACCESS_KEY": "bucket-test", "ROOT_SECRET_KEY": "bucket-test-secret"},
        log_path=tmp_path / "versitygw.log",
        ready_url=f"http://127.0.0.1:{port}/health",
    ).start()
    try:
        process.wait_ready(timeout_s=30)
        yield f"http://127.0.0.1:{port}", data
    finally:
        process.terminate(timeout_s=10)


def _bucket_command() -> list[str]:
    """The dev overlay's init container command (the compose file runs the same one)."""
    (s3,) = [
        d for d in rendered("dev") if d["kind"] == "Deployment" and d["metadata"]["name"] == "s3"
    ]
    (init,) = pod_spec(s3)["initContainers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["s3-bucket"]["entrypoint"][:2] == init["command"][:2]
    command: list[str] = init["command"]
    return command


def test_a_directory_made_before_start_is_a_usable_bucket(versitygw: tuple[str, Path]) -> None:
    endpoint, data = versitygw
    (bucket,) = [p.name for p in data.iterdir()]
    settings = S3Settings(
        endpoint_url=endpoint, access_key="bucket-test", secret_key="bucket-test-secret"
    )
    store = open_store(f"s3://{bucket}/models", s3=settings)
    store.put_bytes("shop/v1/manifest.json", b"{}")
    assert store.get_bytes("shop/v1/manifest.json") == b"{}"
    assert store.list("shop/") == ["shop/v1/manifest.json"]
