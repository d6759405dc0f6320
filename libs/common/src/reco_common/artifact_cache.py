"""An artifact's local copy where a worker serves from: downloaded into a cache directory,
verified once, then mapped.

The format itself (files, manifest, value checks) is :mod:`reco_common.artifact`'s. Checked once
per copy, not at every load (:func:`load_artifact`): the sha256 of every file, and the values no
shape can tell (:meth:`reco_common.artifact.ModelArrays.check_values`). A cache directory where
both held is marked (:class:`VerifiedMark`); a load that finds the mark maps the files and checks
their shapes only. Every path is built from segments the manifest's contract already validated,
and checked to stay in the cache.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt
from msgspec import Struct

from reco_common.artifact import (
    ITEM_FACTORS,
    ITEM_ID_KEYS,
    ITEM_ID_ROWS,
    ITEM_IDS,
    ITEM_INDEX,
    NEIGHBOUR_SCORES,
    NEIGHBOURS,
    POPULAR,
    USER_FACTORS,
    USER_ID_KEYS,
    USER_ID_ROWS,
    USER_IDS,
    USER_ITEMS_INDICES,
    USER_ITEMS_INDPTR,
    VALUE_CHECKS,
    ArtifactError,
    ItemNeighbours,
    Manifest,
    ModelArrays,
    PopularList,
    UserItems,
    pinned_manifest,
)
from reco_common.contracts import ContractError, Sha256Hex, decode, encode, loads
from reco_common.id_lookup import IdLookup, IdLookupError
from reco_common.storage import ObjectStore, file_sha256

if TYPE_CHECKING:  # imported where used: only the trainer and the worker install usearch
    from reco_common.ann import ItemIndex
    from reco_common.ivf import IvfIndex
    from reco_common.scann_index import ScannIndex

logger = logging.getLogger(__name__)

# In a cache directory (not in the artifact): what was checked there (VerifiedMark). Named apart
# from the ``.verified`` digest of workers before the value checks moved to verification, so
# that old and new workers sharing a cache volume during an upgrade do not undo each other.
VERIFIED_MARKER = ".verified.json"


class StoredIds(Sequence[str]):
    """The ids of a verified ``*_ids.json`` in row order, decoded on first use: a worker that
    maps the id lookup never holds 10M user ids as Python strings."""

    def __init__(self, path: Path, count: int) -> None:
        self._path = path
        self._count = count
        self._ids: list[str] | None = None

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._decoded()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def _decoded(self) -> list[str]:
        if self._ids is None:
            ids = loads(self._path.read_bytes())
            if not isinstance(ids, list) or len(ids) != self._count:
                raise ArtifactError(f"{self._path.name}: not a list of {self._count} ids")
            self._ids = ids
        return self._ids


class VerifiedMark(Struct, frozen=True, forbid_unknown_fields=True):
    """:data:`VERIFIED_MARKER` in a cache directory, written by the worker that checked it:
    every file there hashes to the manifest whose bytes hash to ``manifest_sha256``, and the
    arrays passed :meth:`ModelArrays.check_values` of version ``value_checks``."""

    manifest_sha256: Sha256Hex
    value_checks: int


@dataclass(frozen=True, slots=True)
class LoadedModel:
    manifest: Manifest
    arrays: ModelArrays
    uri: str


def load_artifact(
    store: ObjectStore, *, cache_dir: Path, manifest_sha256: str | None = None
) -> LoadedModel:
    """Download the artifact the store is rooted at into ``cache_dir``, verify and load it.

    ``manifest_sha256``: the pin of the ``model-published`` event (or the controller's load
    request); the manifest is refused unless its bytes hash to it. Every path below is built
    from segments the manifest's contract already validated, and checked to stay in the cache.

    Verified once per cache directory: once every file there matched the manifest and the
    arrays passed :meth:`ModelArrays.check_values`, a :class:`VerifiedMark` is written beside
    them (:data:`VERIFIED_MARKER`). A later load of the same manifest into the same directory
    (a restarted worker, another pod on a shared cache volume) finds the mark and the files'
    sizes right, and maps the arrays without reading them through sha256 or the value checks
    again: a 1M-item model starts in seconds (docs/worker.md).
    """
    manifest, digest = pinned_manifest(store, sha256=manifest_sha256)
    local = _cache_path(cache_dir, manifest)
    verified = _verified_here(local, manifest, digest)
    if not verified:
        _fill_cache(store, local, manifest)
    arrays = _mapped_arrays(local, manifest)
    if not verified:
        arrays.check_values()
        _mark_verified(local, digest)
    logger.info(
        "loaded model %s/%s: %d users, %d items, dim %d",
        manifest.model_name,
        manifest.version,
        manifest.n_users,
        manifest.n_items,
        manifest.dim,
    )
    return LoadedModel(manifest=manifest, arrays=arrays, uri=store.root_uri)


def _mapped_arrays(local: Path, manifest: Manifest) -> ModelArrays:
    """The arrays of the files in ``local``, mapped; the user ids decoded only if asked for (a
    worker with the user lookup never does)."""
    popular = decode(PopularList, (local / POPULAR).read_bytes())
    user_lookup = _id_lookup(local, manifest, (USER_ID_KEYS, USER_ID_ROWS))
    return ModelArrays(
        item_ids=loads((local / ITEM_IDS).read_bytes()),
        user_ids=StoredIds(local / USER_IDS, manifest.n_users)
        if user_lookup is not None
        else loads((local / USER_IDS).read_bytes()),
        item_factors=np.load(local / ITEM_FACTORS, mmap_mode="r", allow_pickle=False),
        user_factors=np.load(local / USER_FACTORS, mmap_mode="r", allow_pickle=False),
        popular_items=popular.items,
        popular_scores=popular.scores,
        user_items=_user_items(local, manifest),
        neighbours=_neighbours(local, manifest),
        item_index=_item_index(local, manifest),
        item_ivf=_item_ivf(local, manifest),
        item_scann=_item_scann(local, manifest),
        item_lookup=_id_lookup(local, manifest, (ITEM_ID_KEYS, ITEM_ID_ROWS)),
        user_lookup=user_lookup,
    )


def _verified_here(local: Path, manifest: Manifest, digest: str) -> bool:
    """The files in ``local`` were verified against this very manifest with the current value
    checks, and are all there."""
    try:
        mark = decode(VerifiedMark, (local / VERIFIED_MARKER).read_bytes())
        if (mark.manifest_sha256, mark.value_checks) != (digest, VALUE_CHECKS):
            return False
        return all((local / n).stat().st_size == e.bytes for n, e in manifest.files.items())
    except (OSError, ContractError):
        return False


def _fill_cache(store: ObjectStore, local: Path, manifest: Manifest) -> None:
    """Every file of the manifest in ``local`` with its checksum: kept if it already matches,
    downloaded (atomically: a reader never sees half a file) and checked otherwise."""
    local.mkdir(parents=True, exist_ok=True)
    for name, entry in manifest.files.items():
        path = local / name
        if path.is_file() and file_sha256(path) == entry.sha256:
            continue
        if store.download_file(name, path) != entry.sha256:
            raise ArtifactError(f"{store.uri(name)}: sha256 does not match the manifest")


def _mark_verified(local: Path, digest: str) -> None:
    temporary = local / f"{VERIFIED_MARKER}.{os.getpid()}"
    try:
        temporary.write_bytes(
            encode(VerifiedMark(manifest_sha256=digest, value_checks=VALUE_CHECKS))
        )
        temporary.replace(local / VERIFIED_MARKER)
    except OSError as exc:  # a read-only cache: verified again next time, nothing worse
        logger.warning("could not mark %s verified: %s", local, exc)


def _cache_path(cache_dir: Path, manifest: Manifest) -> Path:
    """``cache_dir/<model_name>/<version>``, refused if it (or a file in it) could leave it;
    the contract's path rules make this impossible, the check keeps it so."""
    root = cache_dir.resolve()
    local = (root / manifest.model_name / manifest.version).resolve()
    escaping = [n for n in manifest.files if (local / n).resolve().parent != local]
    if not local.is_relative_to(root) or local == root or escaping:
        raise ArtifactError(f"{manifest.model_name}/{manifest.version}: leaves the cache directory")
    return local


def _optional_pair(
    local: Path, manifest: Manifest, names: tuple[str, str]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any]] | None:
    """Two arrays that an artifact carries together or not at all."""
    present = set(names) & manifest.files.keys()
    if not present:
        return None
    if len(present) == 1:
        raise ArtifactError(f"{manifest.version}: {present.pop()} without its pair")
    first, second = (np.load(local / name, mmap_mode="r", allow_pickle=False) for name in names)
    return first, second


def _user_items(local: Path, manifest: Manifest) -> UserItems | None:
    pair = _optional_pair(local, manifest, (USER_ITEMS_INDPTR, USER_ITEMS_INDICES))
    return None if pair is None else UserItems(indptr=pair[0], indices=pair[1])


def _neighbours(local: Path, manifest: Manifest) -> ItemNeighbours | None:
    pair = _optional_pair(local, manifest, (NEIGHBOURS, NEIGHBOUR_SCORES))
    return None if pair is None else ItemNeighbours(rows=pair[0], scores=pair[1])


def _id_lookup(local: Path, manifest: Manifest, names: tuple[str, str]) -> IdLookup | None:
    pair = _optional_pair(local, manifest, names)
    try:
        return None if pair is None else IdLookup(keys=pair[0], rows=pair[1])
    except IdLookupError as exc:
        raise ArtifactError(f"{manifest.version}: {names[0]}: {exc}") from None


def _item_index(local: Path, manifest: Manifest) -> ItemIndex | None:
    if ITEM_INDEX not in manifest.files:
        return None
    from reco_common.ann import ItemIndex, ItemIndexError

    try:
        return ItemIndex.open(local / ITEM_INDEX)
    except (ItemIndexError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{manifest.version}: {ITEM_INDEX}: {exc}") from None


def _item_ivf(local: Path, manifest: Manifest) -> IvfIndex | None:
    from reco_common.ivf import FILES, RECALL, IvfError, IvfIndex

    if not _all_or_none(manifest, FILES, "item IVF index"):
        return None
    try:
        optional = [RECALL] if RECALL in manifest.files else []
        return IvfIndex.open({name: local / name for name in [*FILES, *optional]})
    except (IvfError, ValueError) as exc:
        raise ArtifactError(f"{manifest.version}: item IVF index: {exc}") from None


def _item_scann(local: Path, manifest: Manifest) -> ScannIndex | None:
    from reco_common.scann_index import FILES, RECALL, ScannIndex, ScannIndexError

    if not _all_or_none(manifest, (*FILES, RECALL), "item ScaNN index"):
        return None
    try:
        return ScannIndex.open(local, local / RECALL)
    except (ScannIndexError, ValueError) as exc:
        raise ArtifactError(f"{manifest.version}: item ScaNN index: {exc}") from None


def _all_or_none(manifest: Manifest, names: tuple[str, ...], what: str) -> bool:
    """Whether the artifact has every file of ``names`` (False: none); refused with some."""
    present = set(names) & manifest.files.keys()
    if present and len(present) < len(names):
        raise ArtifactError(f"{manifest.version}: {what} incomplete, only {sorted(present)}")
    return bool(present)
