"""Reading a model artifact's manifest: what the ``local`` target and ``rollout`` CLI know of a model."""

from __future__ import annotations

import asyncio

from reco_common.artifact import Manifest, read_manifest
from reco_common.settings import S3Settings
from reco_common.storage import open_store


async def read(uri: str, *, s3: S3Settings) -> Manifest:
    """The manifest of the artifact at ``uri`` (``ArtifactError`` when it is not a model)."""
    return await asyncio.to_thread(lambda: read_manifest(open_store(uri, s3=s3)))
