from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reco_common.artifact import ITEM_INDEX, ArtifactError, read_manifest
from reco_common.artifact_cache import load_artifact
from reco_common.contracts import ModelPublished, ObjectLayout
from reco_common.interactions import InteractionsError
from reco_common.ivf import FILES as IVF_FILES
from reco_common.ivf import RECALL as IVF_RECALL
from reco_common.scann_index import FILES as SCANN_FILES
from reco_common.scann_index import RECALL as SCANN_RECALL
from reco_common.settings import KafkaSettings, S3Settings
from reco_common.storage import open_store
from reco_trainer import publishing
from reco_trainer.params import TrainParams
from reco_trainer.pipeline import Inputs, Job, run_job
from reco_trainer.progress import LogProgress


class FakeProducer:
    """Stands in for the Kafka producer at our boundary (reco_common.kafka)."""

    def __init__(self, sent: list[ModelPublished]) -> None:
        self.sent = sent

    async def stop(self) -> None:
        return None


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[ModelPublished]:
    events: list[ModelPublished] = []

    async def start(settings: KafkaSettings, **_: Any) -> FakeProducer:
        return FakeProducer(events)

    async def publish(producer: FakeProducer, topic: str, key: str, event: Any) -> None:
        assert topic == "model-published"
        assert key == event.model_name
        producer.sent.append(event)

    async def ensure_topics(settings: KafkaSettings, *topics: str) -> None:
        assert topics == ("model-published",)

    monkeypatch.setattr(publishing, "ensure_topics", ensure_topics)
    monkeypatch.setattr(publishing, "start_producer", start)
    monkeypatch.setattr(publishing, "publish", publish)
    return events


@pytest.fixture
def no_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    async def must_not_be_called(*_: Any, **__: Any) -> None:
        raise AssertionError("Kafka must not be used")

    monkeypatch.setattr(publishing, "ensure_topics", must_not_be_called)
    monkeypatch.setattr(publishing, "start_producer", must_not_be_called)


def _job(store_uri: str, params: TrainParams, *, publish: bool = False, **kw: Any) -> Job:
    return Job(
        model_name="shop",
        store_uri=store_uri,
        params=params,
        s3=S3Settings(),
        kafka=KafkaSettings() if publish else None,
        progress=LogProgress,
        **kw,
    )


@pytest.mark.usefixtures("no_kafka")
def test_the_index_is_built_into_the_artifact_from_the_catalog_size_up(
    shop_files: dict[str, str], tiny_params: TrainParams, store_uri: str, tmp_path: Path
) -> None:
    inputs = Inputs(interactions=[shop_files["interactions"]])
    small = run_job(_job(store_uri, tiny_params), inputs)
    assert ITEM_INDEX not in read_manifest(open_store(small.artifact_uri)).files
    assert not set(IVF_FILES) & read_manifest(open_store(small.artifact_uri)).files.keys()
    assert not set(SCANN_FILES) & read_manifest(open_store(small.artifact_uri)).files.keys()
    hnsw = tiny_params.updated({"index_min_items": 0, "index_kind": "hnsw"})
    indexed = run_job(_job(store_uri, hnsw), inputs)
    assert indexed.version != small.version
    loaded = load_artifact(open_store(indexed.artifact_uri), cache_dir=tmp_path / "cache")
    assert ITEM_INDEX in loaded.manifest.files
    assert loaded.arrays.item_index is not None
    assert loaded.arrays.item_ivf is None
    assert len(loaded.arrays.item_index) == loaded.manifest.n_items
    assert "usearch" in loaded.manifest.library_versions
    # The IVF lists: all four files, checked against the item rows on load.
    ivf_params = tiny_params.updated({"index_min_items": 0, "index_kind": "ivf"})
    ivf = run_job(_job(store_uri, ivf_params), inputs)
    loaded = load_artifact(open_store(ivf.artifact_uri), cache_dir=tmp_path / "cache")
    assert set(IVF_FILES) <= loaded.manifest.files.keys()
    assert ITEM_INDEX not in loaded.manifest.files
    assert loaded.arrays.item_ivf is not None
    assert len(loaded.arrays.item_ivf.rows) == loaded.manifest.n_items
    # With its recall by probed lists, measured on the model's own queries: all lists probed
    # find every exact top-100 item.
    assert IVF_RECALL in loaded.manifest.files
    curve = loaded.arrays.item_ivf.recall
    assert curve is not None
    assert curve[0] == 0
    assert curve[-1] == pytest.approx(1.0)
    # The default kind, ScaNN's quantized partitions: its files and recall table, loaded and
    # checked.
    built = run_job(_job(store_uri, tiny_params.updated({"index_min_items": 0})), inputs)
    loaded = load_artifact(open_store(built.artifact_uri), cache_dir=tmp_path / "cache")
    assert {*SCANN_FILES, SCANN_RECALL} <= loaded.manifest.files.keys()
    assert not set(IVF_FILES) & loaded.manifest.files.keys()
    assert loaded.arrays.item_scann is not None
    assert loaded.arrays.item_scann.size == loaded.manifest.n_items
    assert "scann" in loaded.manifest.library_versions
    table = loaded.arrays.item_scann.recall
    assert table.shape[1] == 3
    assert (np.diff(table[:, 1]) >= 0).all()
    assert 0 < table[:, 2].max() <= 1


def test_train_writes_a_loadable_artifact_and_report(
    shop_files: dict[str, str],
    tiny_params: TrainParams,
    store_uri: str,
    tmp_path: Path,
    no_kafka: None,
) -> None:
    metrics_out = tmp_path / "out" / "metrics.json"
    outcome = run_job(
        _job(store_uri, tiny_params, metrics_out=metrics_out),
        Inputs(interactions=[shop_files["interactions"]]),
    )
    assert outcome.trained
    assert not outcome.published
    assert outcome.artifact_uri == f"{store_uri}/models/shop/{outcome.version}"
    loaded = load_artifact(open_store(outcome.artifact_uri), cache_dir=tmp_path / "cache")
    manifest = loaded.manifest
    assert manifest.version == outcome.version
    assert manifest.data_snapshot.startswith("sha256:")
    assert set(manifest.metrics.model) == set(manifest.metrics.baseline)
    assert {"precision@10", "recall@5", "ndcg@10", "auc"} <= set(manifest.metrics.model)
    assert manifest.params["components"] == 8
    assert manifest.params["inputs"][0]["uri"] == shop_files["interactions"]
    assert "rectools-lightfm" in manifest.library_versions
    assert loaded.arrays.item_factors.shape == (manifest.n_items, 9)
    assert loaded.arrays.item_factors.dtype == np.float32
    assert len(loaded.arrays.popular_items) == min(100, manifest.n_items)
    assert loaded.arrays.popular_scores == sorted(loaded.arrays.popular_scores, reverse=True)
    report = metrics_out.read_text()
    assert '"model"' in report
    assert '"baseline"' in report
    assert metrics_out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    store = open_store(outcome.artifact_uri)
    assert store.exists(ObjectLayout.REPORT_JSON)
    assert store.exists(ObjectLayout.REPORT_PNG)


def test_same_data_and_params_is_a_no_op_other_params_a_new_version(
    shop_files: dict[str, str], tiny_params: TrainParams, store_uri: str, no_kafka: None
) -> None:
    inputs = Inputs(interactions=[shop_files["interactions"]])
    first = run_job(_job(store_uri, tiny_params), inputs)
    again = run_job(_job(store_uri, tiny_params.model_copy(update={"threads": 2})), inputs)
    assert not again.trained
    assert again.version == first.version
    assert again.metrics == first.metrics
    other = run_job(_job(store_uri, tiny_params.model_copy(update={"components": 4})), inputs)
    assert other.trained
    assert other.version != first.version


def test_publishes_once_after_verification_and_recovers_a_missed_announcement(
    shop_files: dict[str, str],
    tiny_params: TrainParams,
    store_uri: str,
    sent: list[ModelPublished],
) -> None:
    inputs = Inputs(interactions=[shop_files["interactions"]])
    first = run_job(_job(store_uri, tiny_params, publish=True), inputs)
    assert first.published
    assert [e.version for e in sent] == [first.version]
    assert sent[0].artifact_uri == first.artifact_uri
    assert sent[0].metrics == first.metrics
    assert not run_job(_job(store_uri, tiny_params, publish=True), inputs).published
    assert len(sent) == 1
    # A run that died after writing the artifact but before announcing it: the next one announces.
    open_store(store_uri).delete(ObjectLayout.published_marker("shop", first.version))
    recovered = run_job(_job(store_uri, tiny_params, publish=True), inputs)
    assert recovered.published
    assert not recovered.trained
    assert [e.version for e in sent] == [first.version, first.version]


def test_a_corrupted_artifact_is_not_announced(
    shop_files: dict[str, str],
    tiny_params: TrainParams,
    store_uri: str,
    no_kafka: None,
) -> None:
    inputs = Inputs(interactions=[shop_files["interactions"]])
    first = run_job(_job(store_uri, tiny_params), inputs)
    store = open_store(first.artifact_uri)
    store.put_bytes("item_ids.json", b'["tampered"]')
    with pytest.raises(ArtifactError, match=r"item_ids\.json: sha256 does not match"):
        run_job(_job(store_uri, tiny_params, publish=True), inputs)


def test_malformed_input_fails_before_anything_is_written(
    tmp_path: Path, tiny_params: TrainParams, store_uri: str, no_kafka: None
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,weight\nu1,i1,1\nu2,i2,lots\n")
    with pytest.raises(InteractionsError, match=r"bad\.csv: line 3, column 'weight'"):
        run_job(_job(store_uri, tiny_params, publish=True), Inputs(interactions=[str(bad)]))
    assert open_store(store_uri).list() == []


def test_explicit_test_file_item_features_and_refit(
    shop_files: dict[str, str], store_uri: str, tmp_path: Path, no_kafka: None
) -> None:
    lines = Path(shop_files["interactions"].removeprefix("file://")).read_text().splitlines()
    cut = int(len(lines) * 0.8)
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("\n".join(lines[:cut]) + "\n")
    test.write_text("\n".join([lines[0], *lines[cut:]]) + "\n")
    params = TrainParams(components=8, epochs=2, threads=1, refit=True, validation_fraction=0)
    outcome = run_job(
        _job(store_uri, params),
        Inputs(
            interactions=[str(train)],
            test=str(test),
            item_features=shop_files["items"],
        ),
    )
    manifest = publishing.existing_manifest(open_store(store_uri), "shop", outcome.version)
    assert manifest is not None
    assert manifest.params["refit"] is True
    assert len(manifest.params["inputs"]) == 3
    assert outcome.report is not None
    assert outcome.report.details["explicit_test"] is True
    # Refit on train + test: every user of both files is in the artifact.
    assert manifest.n_users >= outcome.report.details["users"]


def test_members_are_served_as_one_model(
    shop_files: dict[str, str],
    tiny_params: TrainParams,
    store_uri: str,
    tmp_path: Path,
    no_kafka: None,
) -> None:
    params = tiny_params.updated({"members": 3})
    outcome = run_job(_job(store_uri, params), Inputs(interactions=[shop_files["interactions"]]))
    loaded = load_artifact(open_store(outcome.artifact_uri), cache_dir=tmp_path / "cache")
    assert loaded.manifest.params["members"] == 3
    assert loaded.arrays.item_factors.shape == (loaded.manifest.n_items, 3 * 8 + 1)
    assert loaded.arrays.user_factors.shape[1] == 3 * 8 + 1
    single = run_job(
        _job(store_uri, tiny_params), Inputs(interactions=[shop_files["interactions"]])
    )
    assert single.version != outcome.version
