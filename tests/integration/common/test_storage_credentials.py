"""Separate object-store credentials (docs/security.md, "Object storage"), on the real S3 server.

The module starts a VersityGW of its own with scripts/stack.sh, from an empty data dir on a port
of its own, as a fresh machine's ``scripts/stack.sh up`` does: the users of
reco_common.storage_access in its internal IAM and the bucket policy of
scripts/stack/s3/policy.json. The trainer's credential writes artifacts under ``models/``;
a worker's or the controller's reads them and cannot write, overwrite or delete one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError

from reco_common.artifact import ModelArrays, write_artifact
from reco_common.artifact_cache import load_artifact
from reco_common.contracts import EvalMetrics, ObjectLayout
from reco_common.settings import S3Settings
from reco_common.storage import ObjectStore, open_store
from reco_common.storage_access import StoragePrincipal
from reco_devkit.procs import free_port

REPO = Path(__file__).resolve().parents[3]
STACK = REPO / "scripts" / "stack.sh"
BUCKET = "reco"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("RECO_S3_BACKEND") == "moto":
        pytest.skip("moto's server has no users or policies")
    port = free_port()
    env = os.environ | {
        "RECO_STACK_DIR": str(tmp_path_factory.mktemp("s3-access")),
        "RECO_S3_PORT": str(port),
        "RECO_S3_BUCKET": BUCKET,
        "RECO_S3_BACKEND": "versitygw",
    }
    subprocess.run([str(STACK), "up", "s3"], env=env, check=True, timeout=300)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([str(STACK), "down", "s3"], env=env, check=False, timeout=60)


def store_as(endpoint: str, principal: StoragePrincipal) -> ObjectStore:
    s3 = S3Settings(
        endpoint_url=endpoint, access_key=principal.value, secret_key=principal.dev_secret
    )
    return open_store(f"s3://{BUCKET}", s3=s3)


def arrays() -> ModelArrays:
    rng = np.random.default_rng(0)
    return ModelArrays(
        item_ids=[f"i{n}" for n in range(20)],
        user_ids=[f"u{n}" for n in range(5)],
        item_factors=rng.standard_normal((20, 5), dtype=np.float32),
        user_factors=rng.standard_normal((5, 5), dtype=np.float32),
        popular_items=["i1", "i2"],
        popular_scores=[2.0, 1.0],
    )


def publish(store: ObjectStore, version: str) -> str:
    return write_artifact(
        store,
        model_name="shop",
        version=version,
        arrays=arrays(),
        created_at=datetime.now(UTC),
        data_snapshot="access-test",
        params={},
        metrics=EvalMetrics(model={}, baseline={}),
        library_versions={},
    )


def denied(error: pytest.ExceptionInfo[BaseException]) -> bool:
    if isinstance(error.value, ClientError):
        return error.value.response["Error"]["Code"] == "AccessDenied"
    return "AccessDenied" in str(error.value) or "Access Denied" in str(error.value)


@pytest.mark.parametrize("reader", [StoragePrincipal.WORKER, StoragePrincipal.CONTROLLER])
def test_a_read_only_credential_reads_artifacts_and_cannot_write_one(
    s3_endpoint: str, reader: StoragePrincipal, tmp_path: Path
) -> None:
    trainer = store_as(s3_endpoint, StoragePrincipal.TRAINER)
    uri = publish(trainer, f"v-{reader.value}")
    store = store_as(s3_endpoint, reader)
    artifact = store.below(uri.removeprefix(f"s3://{BUCKET}/"))
    prefix = ObjectLayout.model_dir("shop", f"v-{reader.value}")

    assert load_artifact(artifact, cache_dir=tmp_path).arrays.item_ids[0] == "i0"
    with pytest.raises(Exception) as writing:  # noqa: PT011 - the server's refusal, any client type
        publish(store, f"forged-{reader.value}")
    assert denied(writing)
    with pytest.raises(Exception) as overwriting:  # noqa: PT011
        store.put_bytes(f"{prefix}/{ObjectLayout.MANIFEST}", b"{}")
    assert denied(overwriting)
    with pytest.raises(Exception) as deleting:  # noqa: PT011
        store.delete(f"{prefix}/{ObjectLayout.MANIFEST}")
    assert denied(deleting)
    assert trainer.exists(f"{prefix}/{ObjectLayout.MANIFEST}")
    assert not trainer.exists(ObjectLayout.model_dir("shop", f"forged-{reader.value}"))


def test_the_trainer_writes_only_models_and_snapshots(s3_endpoint: str) -> None:
    trainer = store_as(s3_endpoint, StoragePrincipal.TRAINER)
    trainer.put_bytes(f"{ObjectLayout.SNAPSHOTS}/user-actions/s1/part.parquet", b"x")
    with pytest.raises(Exception) as elsewhere:  # noqa: PT011
        trainer.put_bytes("elsewhere/file", b"x")
    assert denied(elsewhere)
