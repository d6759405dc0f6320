"""A model artifact is untrusted input: crafted manifests on the real S3 server and file://.

The reproduced finding: ``load_artifact`` built its cache paths from the manifest's model name,
version and file names and downloaded before any check, so a manifest whose version is
``../../outside`` wrote the artifact's files outside the cache directory.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from reco_common.artifact import (
    ArtifactError,
    FileEntry,
    Manifest,
    ModelArrays,
    announcement,
    write_artifact,
)
from reco_common.artifact_cache import load_artifact
from reco_common.contracts import EvalMetrics, ObjectLayout, decode, encode
from reco_common.storage import ObjectStore


def _artifact(store: ObjectStore) -> ObjectStore:
    """A genuine artifact ``models/shop/v1``; the store rooted at it."""
    rng = np.random.default_rng(0)
    write_artifact(
        store,
        model_name="shop",
        version="v1",
        arrays=ModelArrays(
            item_ids=["i0", "i1"],
            user_ids=["u0"],
            item_factors=rng.normal(size=(2, 3)).astype(np.float32),
            user_factors=rng.normal(size=(1, 3)).astype(np.float32),
            popular_items=["i1"],
            popular_scores=[1.0],
        ),
        created_at=datetime.now(UTC),
        data_snapshot="snap",
        params={},
        metrics=EvalMetrics(model={"precision@10": 0.2}, baseline={"precision@10": 0.1}),
        library_versions={},
    )
    return store.below(ObjectLayout.model_dir("shop", "v1"))


def _craft(artifact: ObjectStore, **changes: Any) -> str:
    """Replace the artifact's manifest by one with ``changes``; return the new bytes' sha256.
    (A writer with the store's credentials can do this: the pin is what stops it.)"""
    manifest = decode(Manifest, artifact.get_bytes(ObjectLayout.MANIFEST))
    crafted = encode(msgspec.structs.replace(manifest, **changes))
    artifact.delete(ObjectLayout.MANIFEST)
    artifact.put_bytes(ObjectLayout.MANIFEST, crafted)
    return hashlib.sha256(crafted).hexdigest()


def _files_outside(cache: Path, tmp_path: Path) -> list[Path]:
    return [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.is_relative_to(cache) and not p.is_relative_to(tmp_path / "root")
    ]


def _renamed_files(artifact: ObjectStore, name: str) -> dict[str, FileEntry]:
    files = dict(decode(Manifest, artifact.get_bytes(ObjectLayout.MANIFEST)).files)
    files[name] = files["popular.json"]
    return files


@pytest.mark.parametrize(
    "crafted",
    [
        {"version": "../../outside"},
        {"model_name": "../../outside"},
        {"version": "/tmp/reco-trust-absolute"},
    ],
    ids=["version-dotdot", "name-dotdot", "version-absolute"],
)
def test_a_crafted_manifest_writes_nothing_outside_the_cache(
    store: ObjectStore, tmp_path: Path, crafted: dict[str, str]
) -> None:
    artifact = _artifact(store)
    pin = _craft(artifact, **crafted)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ArtifactError, match="not a valid manifest"):
        load_artifact(artifact, cache_dir=cache, manifest_sha256=pin)
    assert _files_outside(cache, tmp_path) == []
    assert not Path("/tmp/reco-trust-absolute").exists()
    assert not cache.exists(), "nothing is downloaded before the manifest is validated"


@pytest.mark.parametrize("name", ["../escape.json", "/etc/escape.json", ".hidden"])
def test_file_names_are_one_safe_segment(store: ObjectStore, tmp_path: Path, name: str) -> None:
    artifact = _artifact(store)
    _craft(artifact, files=_renamed_files(artifact, name))
    with pytest.raises(ArtifactError, match="not a valid manifest"):
        load_artifact(artifact, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_manifest_that_differs_from_the_pin_is_refused_before_any_download(
    store: ObjectStore, tmp_path: Path
) -> None:
    artifact = _artifact(store)
    pin = announcement(artifact).manifest_sha256
    _craft(artifact, n_items=3)
    with pytest.raises(ArtifactError, match="not the published"):
        load_artifact(artifact, cache_dir=tmp_path / "cache", manifest_sha256=str(pin))
    assert not (tmp_path / "cache").exists()


def test_the_pinned_artifact_loads(store: ObjectStore, tmp_path: Path) -> None:
    artifact = _artifact(store)
    event = announcement(artifact)
    assert event.manifest_sha256 == artifact.sha256(ObjectLayout.MANIFEST)
    loaded = load_artifact(
        artifact, cache_dir=tmp_path / "cache", manifest_sha256=str(event.manifest_sha256)
    )
    assert loaded.manifest.version == "v1"
    assert _files_outside(tmp_path / "cache", tmp_path) == []
