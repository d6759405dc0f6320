"""The model artifact: what the trainer writes and the worker loads, in one format.

``models/<model_name>/<version>/`` holds plain files, no pickle:

- ``item_factors.npy`` float32 ``[n_items, d + 1]``: each item's representation and its bias as
  the last column; ``user_factors.npy`` likewise for users. With a user query ``[u, 1]`` one
  matrix product gives LightFM's ranking (the user's own bias does not change it);
- ``item_ids.json`` / ``user_ids.json``: the external ids, row by row;
- ``popular.json``: the popularity fallback (items and scores, best first);
- ``user_items_indptr.npy`` int64 ``[n_users + 1]`` and ``user_items_indices.npy`` int32: each
  user's training interactions as CSR rows (item rows of user row ``u`` are
  ``indices[indptr[u]:indptr[u + 1]]``), so that serving can leave out what a user already has.
  Optional: an artifact written before them loads with no training interactions;
- ``item_neighbours.npy`` int32 and ``item_neighbour_scores.npy`` float32, both ``[n_items, K]``:
  each item's ``K`` most similar items by co-occurrence (cosine over the training users), best
  first, ``-1``/``0`` padding; optional like the training interactions;
- ``item_index.usearch``: the approximate top-N index over the item rows
  (:mod:`reco_common.ann`), for large catalogs; optional (the trainer builds it from a catalog
  size up), opened as a memory-mapped view;
- ``item_id_keys.npy`` / ``item_id_rows.npy`` and ``user_id_keys.npy`` / ``user_id_rows.npy``:
  the ids as sorted UTF-8 keys and their rows (:mod:`reco_common.id_lookup`), so that a worker
  maps id → row instead of building a dict at every load; optional (an artifact written before
  them gets its lookups built at load, from the JSON ids);
- ``item_ivf_centroids.npy``, ``item_ivf_offsets.npy``, ``item_ivf_rows.npy`` and
  ``item_ivf_factors.npy``: the inverted-file index over the item rows (:mod:`reco_common.ivf`),
  for large catalogs; optional, all four or none, memory-mapped; with
  ``item_ivf_recall.npy``, the recall the trainer measured for each count of probed lists
  (optional too: artifacts before it have none);
- ``scann_config.pb``, ``ah_codebook.pb``, ``serialized_partitioner.pb``,
  ``datapoint_to_token.npy``, ``hashed_dataset.npy``, ``dataset.npy`` (ScaNN's own files) and
  ``item_scann_recall.npy``: the quantized partitioned index over the item rows
  (:mod:`reco_common.scann_index`), for large catalogs answered in small batches; optional, all
  or none, read into memory by ScaNN (it does not map them);
- ``manifest.json`` last: parameters, metrics, data snapshot, library versions and the sha256
  of every other file. A directory without a manifest is not a model.

Arrays load with ``np.load(mmap_mode="r")`` so a large catalog is paged in, not parsed.

The values no shape can tell (factors finite, neighbour and training rows in range, the id
lookups those of the JSON ids) are checked by :meth:`ModelArrays.check_values`: by the trainer
before it writes, and once per local copy where a worker serves from
(:mod:`reco_common.artifact_cache`, which maps the files of a verified copy).

A manifest is untrusted input until proven otherwise: its bytes are checked against the sha256
the ``model-published`` event carries (when the reader has it), and its decoding enforces the
path rules (model name, version and every file name one safe path segment, see
:data:`reco_common.contracts.PathSegment`) before any key or cache path is built from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import numpy.typing as npt
from msgspec import Meta, Struct, field

from reco_common.contracts import (
    ContractError,
    EvalMetrics,
    ModelName,
    ModelPublished,
    ObjectLayout,
    PathSegment,
    Sha256Hex,
    decode,
    dumps,
    encode,
)
from reco_common.id_lookup import IdLookup, IdLookupError
from reco_common.storage import ObjectExistsError, ObjectStore

if TYPE_CHECKING:  # imported where used: only the trainer and the worker install usearch
    from reco_common.ann import ItemIndex
    from reco_common.ivf import IvfIndex
    from reco_common.scann_index import ScannIndex

logger = logging.getLogger(__name__)

ARTIFACT_FORMAT = 1
ITEM_FACTORS = "item_factors.npy"
USER_FACTORS = "user_factors.npy"
ITEM_IDS = "item_ids.json"
USER_IDS = "user_ids.json"
POPULAR = "popular.json"
REQUIRED_FILES = frozenset({ITEM_FACTORS, USER_FACTORS, ITEM_IDS, USER_IDS, POPULAR})
USER_ITEMS_INDPTR = "user_items_indptr.npy"
USER_ITEMS_INDICES = "user_items_indices.npy"
NEIGHBOURS = "item_neighbours.npy"
NEIGHBOUR_SCORES = "item_neighbour_scores.npy"
ITEM_INDEX = "item_index.usearch"
ITEM_ID_KEYS = "item_id_keys.npy"
ITEM_ID_ROWS = "item_id_rows.npy"
USER_ID_KEYS = "user_id_keys.npy"
USER_ID_ROWS = "user_id_rows.npy"
# The version of ModelArrays.check_values: a cache verified with another version is checked
# again (reco_common.artifact_cache).
VALUE_CHECKS = 2  # 2: the IVF index's permutation and sorted rows

FloatMatrix = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ItemNeighbours:
    """Row ``i``: the item rows most similar to item ``i``, best first (``-1``: none), and
    their similarity scores (``0`` for padding)."""

    rows: npt.NDArray[np.int32]
    scores: FloatMatrix

    def check(self, n_items: int) -> None:
        if self.rows.ndim != 2 or self.rows.shape[0] != n_items:
            raise ArtifactError(f"item_neighbours must be [{n_items}, K]")
        if self.scores.shape != self.rows.shape:
            raise ArtifactError("item_neighbour_scores must have the shape of item_neighbours")

    def check_values(self, n_items: int) -> None:
        if self.rows.size and (self.rows.min() < -1 or self.rows.max() >= n_items):
            raise ArtifactError(f"item_neighbours must be item rows in [0, {n_items}) or -1")
        if not np.isfinite(self.scores).all():
            raise ArtifactError("item_neighbour_scores contain NaN or infinity")


@dataclass(frozen=True, slots=True)
class UserItems:
    """Each user's training items in CSR form: the rows of user ``u`` are
    ``indices[indptr[u]:indptr[u + 1]]`` (item rows of the model, sorted)."""

    indptr: IndexArray
    indices: npt.NDArray[np.int32]

    @staticmethod
    def empty(n_users: int) -> UserItems:
        return UserItems(np.zeros(n_users + 1, dtype=np.int64), np.empty(0, dtype=np.int32))

    def of(self, user_row: int) -> npt.NDArray[np.int32]:
        return self.indices[self.indptr[user_row] : self.indptr[user_row + 1]]

    def check(self, n_users: int) -> None:
        indptr, indices = self.indptr, self.indices
        if indptr.shape != (n_users + 1,) or indptr[0] != 0 or indptr[-1] != len(indices):
            raise ArtifactError(f"user_items indptr must be [{n_users + 1}] from 0 to nnz")

    def check_values(self, n_items: int) -> None:
        indptr, indices = self.indptr, self.indices
        if np.any(np.diff(indptr) < 0):
            raise ArtifactError("user_items indptr must not decrease")
        if len(indices) and (indices.min() < 0 or indices.max() >= n_items):
            raise ArtifactError(f"user_items indices must be item rows in [0, {n_items})")


class ArtifactError(RuntimeError):
    """A model artifact that is missing, incomplete or does not match its checksums."""


class FileEntry(Struct, frozen=True, forbid_unknown_fields=True):
    sha256: Sha256Hex
    bytes: Annotated[int, Meta(ge=0)]


class PopularList(Struct, frozen=True, forbid_unknown_fields=True):
    """``popular.json``: the popularity fallback, best first."""

    items: list[str]
    scores: list[float]


class Manifest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``manifest.json``: everything needed to trust, reproduce and compare a model."""

    format: int = ARTIFACT_FORMAT
    model_name: ModelName
    version: PathSegment
    created_at: datetime
    data_snapshot: str
    data_offsets: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any]
    metrics: EvalMetrics
    library_versions: dict[str, str]
    n_users: int
    n_items: int
    dim: int
    files: dict[PathSegment, FileEntry]

    def published(self, *, artifact_uri: str, manifest_sha256: str) -> ModelPublished:
        """The ``model-published`` event announcing this artifact (stored at ``artifact_uri``,
        its manifest's bytes hashing to ``manifest_sha256``): what the trainer sends, and what
        the controller's ``rollout`` command acts on."""
        return ModelPublished(
            model_name=self.model_name,
            version=self.version,
            artifact_uri=artifact_uri,
            created_at=self.created_at,
            metrics=self.metrics,
            data_snapshot=self.data_snapshot,
            manifest_sha256=manifest_sha256,
        )


@dataclass(frozen=True, slots=True)
class ModelArrays:
    """The trained model as the serving side needs it."""

    item_ids: Sequence[str]
    user_ids: Sequence[str]
    item_factors: FloatMatrix
    user_factors: FloatMatrix
    popular_items: list[str]
    popular_scores: list[float]
    user_items: UserItems | None = None
    neighbours: ItemNeighbours | None = None
    item_index: ItemIndex | None = None
    item_lookup: IdLookup | None = None
    user_lookup: IdLookup | None = None
    item_ivf: IvfIndex | None = None
    item_scann: ScannIndex | None = None

    def __post_init__(self) -> None:
        """The shapes, from the arrays' headers: cheap enough for every load."""
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
        if self.user_items is not None:
            self.user_items.check(len(self.user_ids))
        if self.neighbours is not None:
            self.neighbours.check(len(self.item_ids))
        for name, ids, lookup in self._lookups():
            if lookup is not None and len(lookup) != len(ids):
                raise ArtifactError(f"the {name} id lookup holds {len(lookup)} ids, not {len(ids)}")
        if self.item_index is not None:
            from reco_common.ann import ItemIndexError

            try:
                self.item_index.check(len(self.item_ids), self.item_factors.shape[1])
            except ItemIndexError as exc:
                raise ArtifactError(str(exc)) from None
        if self.item_ivf is not None:
            from reco_common.ivf import IvfError

            try:
                self.item_ivf.check_shapes(*self.item_factors.shape)
            except IvfError as exc:
                raise ArtifactError(str(exc)) from None
        if self.item_scann is not None:
            from reco_common.scann_index import ScannIndexError

            try:
                self.item_scann.check(*self.item_factors.shape)
            except ScannIndexError as exc:
                raise ArtifactError(str(exc)) from None

    def check_values(self) -> None:
        """What the shapes cannot tell, reading every value once: factors and neighbour scores
        finite, training items and neighbours valid rows, the id lookups those of the ids, the
        IVF index's rows a permutation and its sorted copy the item rows."""
        if not (np.isfinite(self.item_factors).all() and np.isfinite(self.user_factors).all()):
            raise ArtifactError("factors contain NaN or infinity")
        if self.user_items is not None:
            self.user_items.check_values(len(self.item_ids))
        if self.neighbours is not None:
            self.neighbours.check_values(len(self.item_ids))
        for name, ids, lookup in self._lookups():
            try:
                if lookup is not None:
                    lookup.check(ids)
            except IdLookupError as exc:
                raise ArtifactError(f"{name} ids: {exc}") from None
        if self.item_ivf is not None:
            from reco_common.ivf import IvfError

            try:
                self.item_ivf.check_values(self.item_factors)
            except IvfError as exc:
                raise ArtifactError(str(exc)) from None

    def _lookups(self) -> tuple[tuple[str, Sequence[str], IdLookup | None], ...]:
        return ("item", self.item_ids, self.item_lookup), ("user", self.user_ids, self.user_lookup)


def write_artifact(
    store: ObjectStore, *, model_name: str, version: str, arrays: ModelArrays, **manifest: Any
) -> str:
    """Upload ``arrays`` under ``models/<name>/<version>/`` (hashed while written), read every
    file's checksum back once, then write the manifest. Refused (:class:`ArtifactError`) if the
    arrays fail :meth:`ModelArrays.check_values`, or their ids cannot have a lookup.

    Returns the artifact URI. An artifact that already has a manifest is never overwritten.
    """
    prefix = ObjectLayout.model_dir(model_name, version)
    if store.exists(f"{prefix}/{ObjectLayout.MANIFEST}"):
        raise ArtifactError(f"{store.uri(prefix)} already exists; artifacts are immutable")
    arrays = with_lookups(arrays)
    arrays.check_values()
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
    try:  # the commit point, write-once: of two racing writers exactly one gets here
        store.create_bytes(f"{prefix}/{ObjectLayout.MANIFEST}", encode(doc))
    except ObjectExistsError:
        raise ArtifactError(
            f"{store.uri(prefix)} already exists; artifacts are immutable"
        ) from None
    return store.uri(prefix)


def with_lookups(arrays: ModelArrays) -> ModelArrays:
    """``arrays`` with the id lookups of their ids (built where missing)."""
    try:
        return dataclasses.replace(
            arrays,
            item_lookup=arrays.item_lookup or IdLookup.build(arrays.item_ids),
            user_lookup=arrays.user_lookup or IdLookup.build(arrays.user_ids),
        )
    except IdLookupError as exc:
        raise ArtifactError(f"ids: {exc}") from None


def _encode_files(arrays: ModelArrays) -> dict[str, bytes]:
    files = {
        ITEM_FACTORS: _npy(arrays.item_factors),
        USER_FACTORS: _npy(arrays.user_factors),
        ITEM_IDS: dumps(list(arrays.item_ids)),
        USER_IDS: dumps(list(arrays.user_ids)),
        POPULAR: encode(PopularList(items=arrays.popular_items, scores=arrays.popular_scores)),
    }
    for (keys, rows), lookup in (
        ((ITEM_ID_KEYS, ITEM_ID_ROWS), arrays.item_lookup),
        ((USER_ID_KEYS, USER_ID_ROWS), arrays.user_lookup),
    ):
        if lookup is not None:
            files[keys] = _npy(lookup.keys)
            files[rows] = _npy(lookup.rows.astype(np.int64))
    if arrays.user_items is not None:
        files[USER_ITEMS_INDPTR] = _npy(arrays.user_items.indptr.astype(np.int64))
        files[USER_ITEMS_INDICES] = _npy(arrays.user_items.indices.astype(np.int32))
    if arrays.neighbours is not None:
        files[NEIGHBOURS] = _npy(arrays.neighbours.rows.astype(np.int32))
        files[NEIGHBOUR_SCORES] = _npy(arrays.neighbours.scores.astype(np.float32))
    if arrays.item_index is not None:
        files[ITEM_INDEX] = arrays.item_index.to_bytes()
    if arrays.item_ivf is not None:
        files.update({name: _npy(a) for name, a in arrays.item_ivf.arrays().items()})
    if arrays.item_scann is not None:
        from reco_common.scann_index import RECALL

        files.update(arrays.item_scann.serialized())
        files[RECALL] = _npy(arrays.item_scann.recall)
    return files


def _npy(matrix: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(matrix), allow_pickle=False)
    return buffer.getvalue()


def read_manifest(store: ObjectStore, *, sha256: str | None = None) -> Manifest:
    """The manifest of the artifact the store is rooted at; with ``sha256``, only if its bytes
    hash to it (the pin of the ``model-published`` event)."""
    return _decode_manifest(store, _manifest_bytes(store), sha256=sha256)


def announcement(store: ObjectStore) -> ModelPublished:
    """The ``model-published`` event of the artifact the store is rooted at, pinned to the
    manifest bytes read now."""
    manifest, digest = pinned_manifest(store)
    return manifest.published(artifact_uri=store.root_uri, manifest_sha256=digest)


def pinned_manifest(store: ObjectStore, *, sha256: str | None = None) -> tuple[Manifest, str]:
    """The manifest of the artifact the store is rooted at and the sha256 of its bytes (the
    pin); with ``sha256``, only if they hash to it."""
    data = _manifest_bytes(store)
    return _decode_manifest(store, data, sha256=sha256), hashlib.sha256(data).hexdigest()


def read_popular(store: ObjectStore, manifest: Manifest) -> PopularList:
    """The popularity fallback of the artifact the store is rooted at, only if its bytes match
    the checksum in ``manifest`` (which the caller verified against its pin)."""
    entry = manifest.files[POPULAR]
    try:
        data = store.get_bytes(POPULAR)
    except FileNotFoundError:
        raise ArtifactError(f"{store.uri(POPULAR)}: missing") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise ArtifactError(f"{store.uri(POPULAR)}: sha256 does not match the manifest")
    try:
        return decode(PopularList, data)
    except ContractError as exc:
        raise ArtifactError(f"{store.uri(POPULAR)}: not a popular list: {exc.reason}") from None


def _manifest_bytes(store: ObjectStore) -> bytes:
    try:
        return store.get_bytes(ObjectLayout.MANIFEST)
    except FileNotFoundError:
        raise ArtifactError(
            f"{store.uri(ObjectLayout.MANIFEST)}: no manifest, not a model"
        ) from None


def _decode_manifest(store: ObjectStore, data: bytes, *, sha256: str | None) -> Manifest:
    where = store.uri(ObjectLayout.MANIFEST)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ArtifactError(f"{where}: the manifest's sha256 is not the published {sha256}")
    try:
        manifest = decode(Manifest, data)
    except ContractError as exc:
        raise ArtifactError(f"{where}: not a valid manifest: {exc.reason}") from None
    if manifest.format != ARTIFACT_FORMAT:
        raise ArtifactError(f"{store.root_uri}: artifact format {manifest.format} is not supported")
    missing = REQUIRED_FILES - manifest.files.keys()
    if missing:
        raise ArtifactError(f"{where}: incomplete artifact, no {', '.join(sorted(missing))}")
    return manifest
