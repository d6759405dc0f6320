"""Reading a model artifact's manifest: what the controller knows of a model.

The rollouts read the candidate's manifest pinned to the sha256 its event carries, and judge
what the manifest says (never the event's own copy of the metrics). The ``local`` target and
the ``rollout`` CLI read manifests too, and the activations read the popular list beside it.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from reco_common.artifact import Manifest, PopularList, announcement, read_manifest, read_popular
from reco_common.contracts import ModelPublished
from reco_common.settings import S3Settings
from reco_common.storage import open_store


class ManifestSource(Protocol):
    """Reads the manifest at ``uri``; with ``sha256`` only if its bytes hash to it
    (``ArtifactError`` otherwise, or when there is no valid manifest)."""

    async def __call__(self, uri: str, *, sha256: str | None) -> Manifest: ...


class StoredManifests:
    """The manifests on the object store (``s3://`` with the shared S3 settings, or ``file://``)."""

    def __init__(self, s3: S3Settings) -> None:
        self._s3 = s3

    async def __call__(self, uri: str, *, sha256: str | None) -> Manifest:
        return await asyncio.to_thread(
            lambda: read_manifest(open_store(uri, s3=self._s3), sha256=sha256)
        )


class StoredPopular:
    """The popular lists on the object store, each verified against its manifest, the
    manifest against its pin (:class:`reco_controller.activation.PopularSource`)."""

    def __init__(self, s3: S3Settings) -> None:
        self._s3 = s3

    async def __call__(self, uri: str, *, sha256: str | None) -> tuple[Manifest, PopularList]:
        return await asyncio.to_thread(self._read, uri, sha256)

    def _read(self, uri: str, sha256: str | None) -> tuple[Manifest, PopularList]:
        store = open_store(uri, s3=self._s3)
        manifest = read_manifest(store, sha256=sha256)
        return manifest, read_popular(store, manifest)


async def read(uri: str, *, s3: S3Settings) -> Manifest:
    """The manifest of the artifact at ``uri`` (``ArtifactError`` when it is not a model)."""
    return await StoredManifests(s3)(uri, sha256=None)


async def published(uri: str, *, s3: S3Settings) -> ModelPublished:
    """The event announcing the artifact at ``uri``, pinned to its manifest as read now."""
    return await asyncio.to_thread(lambda: announcement(open_store(uri, s3=s3)))
