"""Run by the node tier in the trainer's image (``python -c``, as the trainer's principal):
copies a published artifact to a new version and announces the copy on ``model-published``
exactly as the trainer announces what it trained (``reco_trainer.publishing``).

    republish SOURCE_URI VERSION [CORRUPT_FILE]

The copy carries the source's files and metrics (so the quality gate passes it: no regression)
under a new version and creation time. With ``CORRUPT_FILE`` one byte of that file is flipped
in the copy while its manifest keeps the original sha256: the controller's gate (which reads
the pinned manifest, not every file) lets it through, and a worker refuses to load it, the
artifact a broken trainer or a bit-rotten store would hand the platform. Prints the copy's URI.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

from msgspec.structs import replace

from reco_common.artifact import Manifest
from reco_common.contracts import ObjectLayout, decode, encode
from reco_common.service import load_service_settings
from reco_common.storage import open_store
from reco_trainer.publishing import announce, event_for
from reco_trainer.settings import Settings


def republish(source_uri: str, version: str, corrupt: str | None) -> str:
    settings = load_service_settings(Settings, service="trainer")
    store = open_store(settings.trainer.store_uri, s3=settings.s3)
    source = source_uri.removeprefix(store.root_uri + "/")
    manifest = decode(Manifest, store.get_bytes(f"{source}/{ObjectLayout.MANIFEST}"))
    copy = replace(manifest, version=version, created_at=datetime.now(UTC))
    target = ObjectLayout.model_dir(copy.model_name, copy.version)
    for name in manifest.files:
        data = bytearray(store.get_bytes(f"{source}/{name}"))
        if name == corrupt:
            data[len(data) // 2] ^= 0xFF
        store.put_bytes(f"{target}/{name}", bytes(data))
    store.put_bytes(f"{target}/{ObjectLayout.MANIFEST}", encode(copy))
    event = event_for(store, copy)
    asyncio.run(announce(store, event, kafka=settings.kafka))
    return str(event.artifact_uri)


if __name__ == "__main__":
    source_uri, version, *rest = sys.argv[1:]
    print(republish(source_uri, version, rest[0] if rest else None))
