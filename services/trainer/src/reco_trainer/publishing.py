"""Announcing a verified artifact on ``model-published``, at most once per version.

The artifact's checksums are read back from the store before anything is sent; after the
brokers acknowledged the event, :meth:`ObjectLayout.published_marker` records it, so a re-run
of the same version (a CronJob that fired twice) sends nothing, while a run that died between
writing the artifact and announcing it announces it on the next attempt.
"""

from __future__ import annotations

import logging

from reco_common.artifact import ArtifactError, Manifest
from reco_common.contracts import ContractError, ModelPublished, ObjectLayout, decode, encode
from reco_common.kafka import ensure_topics, publish, start_producer
from reco_common.settings import KafkaSettings
from reco_common.storage import ObjectStore

logger = logging.getLogger(__name__)


def existing_manifest(store: ObjectStore, model_name: str, version: str) -> Manifest | None:
    """The manifest of ``models/<name>/<version>`` when that artifact is complete."""
    key = f"{ObjectLayout.model_dir(model_name, version)}/{ObjectLayout.MANIFEST}"
    if not store.exists(key):
        return None
    try:
        return decode(Manifest, store.get_bytes(key))
    except ContractError as exc:
        raise ArtifactError(f"{store.uri(key)}: unreadable manifest: {exc.reason}") from None


def verify(store: ObjectStore, manifest: Manifest) -> None:
    """Read every file of the artifact back and compare it with the manifest's sha256."""
    prefix = ObjectLayout.model_dir(manifest.model_name, manifest.version)
    for name, entry in manifest.files.items():
        if store.sha256(f"{prefix}/{name}") != entry.sha256:
            raise ArtifactError(f"{store.uri(prefix)}/{name}: sha256 does not match the manifest")
    logger.info("verified %d files of %s", len(manifest.files), store.uri(prefix))


def is_published(store: ObjectStore, model_name: str, version: str) -> bool:
    return store.exists(ObjectLayout.published_marker(model_name, version))


def event_for(store: ObjectStore, manifest: Manifest) -> ModelPublished:
    """The event announcing ``manifest``'s artifact, pinned to the stored manifest's sha256."""
    prefix = ObjectLayout.model_dir(manifest.model_name, manifest.version)
    digest = store.sha256(f"{prefix}/{ObjectLayout.MANIFEST}")
    return manifest.published(artifact_uri=store.uri(prefix), manifest_sha256=digest)


async def announce(store: ObjectStore, event: ModelPublished, *, kafka: KafkaSettings) -> None:
    """Send ``event`` (idempotent producer, acks=all), then record that it went out. The topic
    is made first if need be: the trainer may run before any controller did."""
    await ensure_topics(kafka, kafka.topics.model_published)
    producer = await start_producer(kafka)
    try:
        await publish(producer, kafka.topics.model_published, event.model_name, event)
    finally:
        await producer.stop()
    store.put_bytes(ObjectLayout.published_marker(event.model_name, event.version), encode(event))
    logger.info(
        "published %s %s on %s", event.model_name, event.version, kafka.topics.model_published
    )
