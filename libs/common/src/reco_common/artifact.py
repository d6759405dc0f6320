"""The model artifact: what the trainer writes and the worker loads, in one format.

``models/<model_name>/<version>/`` holds plain files, no pickle:

- ``item_factors.npy`` float32 ``[n_items, d + 1]``: each item's representation and its bias as
  the last column; ``user_factors.npy`` likewise for users. With a user query ``[u, 1]`` one
  matrix product gives LightFM's ranking (the user's own bias does not change it);
- ``item_ids.json`` / ``user_ids.json``: the external ids, row by row;
- ``popular.json``: the popularity fallback (items and scores, best first);
- ``manifest.json`` last: parameters, metrics, data snapshot, library versions and the sha256
  of every other file. A directory without a manifest is not a model.

Arrays load with ``np.load(mmap_mode="r")`` so a large catalog is paged in, not parsed.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from msgspec import Struct, field

from reco_common.contracts import (
    EvalMetrics,
    ModelPublished,
    ObjectLayout,
    decode,
    dumps,
    encode,
    loads,
)
from reco_common.storage import ObjectStore, file_sha256

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
ITEM_FACTORS = "item_factors.npy"
USER_FACTORS = "user_factors.npy"
ITEM_IDS = "item_ids.json"
USER_IDS = "user_ids.json"
POPULAR = "popular.json"

FloatMatrix = npt.NDArray[np.float32]


class ArtifactError(RuntimeError):
    """A model artifact that is missing, incomplete or does not match its checksums."""


class FileEntry(Struct, frozen=True, forbid_unknown_fields=True):
    sha256: str
    bytes: int


class PopularList(Struct, frozen=True, forbid_unknown_fields=True):
    """``popular.json``: the popularity fallback, best first."""

    items: list[str]
    scores: list[float]


class Manifest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``manifest.json``: everything needed to trust, reproduce and compare a model."""

    format: int = ARTIFACT_FORMAT
    model_name: str
    version: str
    created_at: datetime
    data_snapshot: str
    data_offsets: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any]
    metrics: EvalMetrics
    library_versions: dict[str, str]
    n_users: int
    n_items: int
    dim: int
    files: dict[str, FileEntry]

    def published(self, *, artifact_uri: str) -> ModelPublished:
        """The ``model-published`` event announcing this artifact (stored at ``artifact_uri``):
        what the trainer sends, and what the controller's ``rollout`` command acts on."""
        return ModelPublished(
            model_name=self.model_name,
            version=self.version,
            artifact_uri=artifact_uri,
            created_at=self.created_at,
            metrics=self.metrics,
            data_snapshot=self.data_snapshot,
        )


@dataclass(frozen=True, slots=True)
class ModelArrays:
    """The trained model as the serving side needs it."""

    item_ids: list[str]
    user_ids: list[str]
    item_factors: FloatMatrix
    user_factors: FloatMatrix
    popular_items: list[str]
    popular_scores: list[float]

    def __post_init__(self) -> None:
        for name, ids, matrix in (
            ("item", self.item_ids, self.item_factors),
            ("user", self.user_ids, self.user_factors),
        ):
            if matrix.dtype != np.float32 or matrix.ndim != 2 or matrix.shape[0] != len(ids):
                raise ArtifactError(
                    f"{name}_factors must be float32 [{len(ids)}, d+1], "
                    f"got {matrix.dtype} {matrix.shape}"
                )
        if self.item_factors.shape[1] != self.user_factors.shape[1]:
            raise ArtifactError("item and user factors differ in width")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    manifest: Manifest
    arrays: ModelArrays
    uri: str


def write_artifact(
    store: ObjectStore, *, model_name: str, version: str, arrays: ModelArrays, **manifest: Any
) -> str:
    """Upload ``arrays`` under ``models/<name>/<version>/`` (hashed while written), read every
    file's checksum back once, then write the manifest.

    Returns the artifact URI. An artifact that already has a manifest is never overwritten.
    """
    prefix = ObjectLayout.model_dir(model_name, version)
    if store.exists(f"{prefix}/{ObjectLayout.MANIFEST}"):
        raise ArtifactError(f"{store.uri(prefix)} already exists; artifacts are immutable")
    entries = {
        name: FileEntry(sha256=store.put_bytes(f"{prefix}/{name}", data), bytes=len(data))
        for name, data in _encode_files(arrays).items()
    }
    for name, entry in entries.items():
        if store.sha256(f"{prefix}/{name}") != entry.sha256:
            raise ArtifactError(f"{store.uri(prefix)}/{name}: checksum differs after upload")
    doc = Manifest(
        model_name=model_name,
        version=version,
        n_users=len(arrays.user_ids),
        n_items=len(arrays.item_ids),
        dim=arrays.item_factors.shape[1] - 1,
        files=entries,
        **manifest,
    )
    store.put_bytes(f"{prefix}/{ObjectLayout.MANIFEST}", encode(doc))
    return store.uri(prefix)


def _encode_files(arrays: ModelArrays) -> dict[str, bytes]:
    return {
        ITEM_FACTORS: _npy(arrays.item_factors),
        USER_FACTORS: _npy(arrays.user_factors),
        ITEM_IDS: dumps(arrays.item_ids),
        USER_IDS: dumps(arrays.user_ids),
        POPULAR: encode(PopularList(items=arrays.popular_items, scores=arrays.popular_scores)),
    }


def _npy(matrix: FloatMatrix) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(matrix), allow_pickle=False)
    return buffer.getvalue()


def read_manifest(store: ObjectStore) -> Manifest:
    """The manifest of the artifact the store is rooted at."""
    try:
        return decode(Manifest, store.get_bytes(ObjectLayout.MANIFEST))
    except FileNotFoundError:
        raise ArtifactError(
            f"{store.uri(ObjectLayout.MANIFEST)}: no manifest, not a model"
        ) from None


def load_artifact(store: ObjectStore, *, cache_dir: Path) -> LoadedModel:
    """Download the artifact the store is rooted at into ``cache_dir``, verify and load it."""
    manifest = read_manifest(store)
    if manifest.format != ARTIFACT_FORMAT:
        raise ArtifactError(f"{store.root_uri}: artifact format {manifest.format} is not supported")
    local = cache_dir / manifest.model_name / manifest.version
    local.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest.files.items():
        path = local / name
        if path.is_file() and file_sha256(path) == entry.sha256:
            continue
        if store.download_file(name, path) != entry.sha256:
            raise ArtifactError(f"{store.uri(name)}: sha256 does not match the manifest")
    popular = decode(PopularList, (local / POPULAR).read_bytes())
    arrays = ModelArrays(
        item_ids=loads((local / ITEM_IDS).read_bytes()),
        user_ids=loads((local / USER_IDS).read_bytes()),
        item_factors=np.load(local / ITEM_FACTORS, mmap_mode="r", allow_pickle=False),
        user_factors=np.load(local / USER_FACTORS, mmap_mode="r", allow_pickle=False),
        popular_items=popular.items,
        popular_scores=popular.scores,
    )
    logger.info(
        "loaded model %s/%s: %d users, %d items, dim %d",
        manifest.model_name,
        manifest.version,
        manifest.n_users,
        manifest.n_items,
        manifest.dim,
    )
    return LoadedModel(manifest=manifest, arrays=arrays, uri=store.root_uri)
