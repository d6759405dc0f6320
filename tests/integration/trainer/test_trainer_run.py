from __future__ import annotations

import asyncio
from pathlib import Path

from trainer_stack import read_all, run_trainer

from reco_common.artifact_cache import load_artifact
from reco_common.contracts import ModelPublished, ObjectLayout, decode
from reco_common.settings import KafkaSettings, S3Settings
from reco_common.storage import ObjectStore, open_store
from reco_common.synth import ShopConfig, generate, write_shop


async def test_cron_run_archives_trains_stores_verified_artifact_and_publishes_once(
    kafka_settings: KafkaSettings,
    s3_root: str,
    s3_store: ObjectStore,
    s3_settings: S3Settings,
    tmp_path: Path,
) -> None:
    shop = ["--interactions", "3000", "--users", "120", "--items", "100", "--categories", "5"]
    made = await asyncio.to_thread(
        run_trainer, ["synth", "--to-kafka", *shop], kafka=kafka_settings, store_uri=s3_root
    )
    assert made.returncode == 0, made.stderr
    assert f"3000 on {kafka_settings.topics.user_actions}" in made.stdout

    first = await asyncio.to_thread(run_trainer, ["run"], kafka=kafka_settings, store_uri=s3_root)
    assert first.returncode == 0, first.stderr
    assert "published" in first.stderr

    versions = {k.split("/")[2] for k in s3_store.list(f"{ObjectLayout.MODELS}/shop/")}
    assert len(versions) == 1
    version = versions.pop()
    artifact = open_store(s3_store.uri(ObjectLayout.model_dir("shop", version)), s3=s3_settings)
    loaded = load_artifact(artifact, cache_dir=tmp_path)  # downloads and checks every sha256
    manifest = loaded.manifest
    assert sum(manifest.data_offsets.values()) == 3_000
    assert set(manifest.metrics.model) == set(manifest.metrics.baseline)
    for name, entry in manifest.files.items():
        assert artifact.sha256(name) == entry.sha256

    events = await read_all(kafka_settings, kafka_settings.topics.model_published)
    published = [decode(ModelPublished, r.value) for r in events]
    assert [(e.model_name, e.version) for e in published] == [("shop", version)]
    assert published[0].artifact_uri == artifact.root_uri
    assert published[0].metrics == manifest.metrics
    assert published[0].data_snapshot == manifest.data_snapshot

    second = await asyncio.to_thread(run_trainer, ["run"], kafka=kafka_settings, store_uri=s3_root)
    assert second.returncode == 0, second.stderr
    assert "already exists" in second.stderr
    assert len(await read_all(kafka_settings, kafka_settings.topics.model_published)) == 1
    assert {k.split("/")[2] for k in s3_store.list(f"{ObjectLayout.MODELS}/shop/")} == {version}


async def test_cron_run_without_data_fails_and_publishes_nothing(
    kafka_settings: KafkaSettings, s3_root: str, s3_store: ObjectStore
) -> None:
    result = await asyncio.to_thread(run_trainer, ["run"], kafka=kafka_settings, store_uri=s3_root)
    assert result.returncode == 2
    assert "nothing to train on" in result.stderr
    assert await read_all(kafka_settings, kafka_settings.topics.model_published) == []
    assert s3_store.list(ObjectLayout.MODELS) == []


async def test_train_from_s3_files_to_s3_output_with_kafka_publish(
    kafka_settings: KafkaSettings, s3_root: str, s3_store: ObjectStore, s3_settings: S3Settings
) -> None:
    shop = generate(ShopConfig(n_interactions=2_000, n_users=100, n_items=80, seed=3))
    uris = write_shop(shop, f"{s3_root}/input", s3=s3_settings)
    result = await asyncio.to_thread(
        run_trainer,
        [
            "train",
            "-i",
            uris["interactions"],
            "--item-features",
            uris["items"],
            "--model-name",
            "files",
        ],
        kafka=kafka_settings,
        store_uri=s3_root,
    )
    assert result.returncode == 0, result.stderr
    events = await read_all(kafka_settings, kafka_settings.topics.model_published)
    assert [decode(ModelPublished, r.value).model_name for r in events] == ["files"]
