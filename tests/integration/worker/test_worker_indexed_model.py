"""A model the trainer built with its approximate index (ScaNN's quantized partitions, the
default, the IVF lists or the HNSW graph), served by a worker on the real stack: the artifact on
the S3 server, the index loaded from the worker's cache and searched for every list, seen items
still left out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from worker_stack import MODEL, metric, produce, running, until

from reco_common.artifact import ITEM_INDEX, read_manifest
from reco_common.contracts import ActionType, RecommendationList, UserAction
from reco_common.interactions import LogFormat
from reco_common.ivf import FILES as IVF_FILES
from reco_common.ivf import RECALL as IVF_RECALL
from reco_common.redis_store import read_list
from reco_common.scann_index import FILES as SCANN_FILES
from reco_common.scann_index import RECALL as SCANN_RECALL
from reco_common.settings import KafkaSettings, RedisSettings, S3Settings
from reco_common.storage import open_store
from reco_common.synth import ShopConfig, generate, write_shop
from reco_trainer.params import TrainParams
from reco_trainer.pipeline import Inputs, Job, run_job
from reco_trainer.progress import LogProgress
from reco_worker.settings import WorkerSettings

TOP_N = 20


def train_with_index(s3_root: str, s3: S3Settings, tmp_path: Path, kind: str) -> str:
    shop = generate(ShopConfig(n_interactions=6_000, n_users=200, n_items=600, n_categories=6))
    files = write_shop(shop, str(tmp_path / "shop"), fmt=LogFormat.CSV)
    params = TrainParams(
        components=8,
        epochs=3,
        patience=2,
        threads=1,
        validation_users=100,
        index_min_items=0,
        index_kind=kind,
    )
    job = Job(
        model_name=MODEL, store_uri=s3_root, params=params, s3=s3, kafka=None, progress=LogProgress
    )
    outcome = run_job(job, Inputs(interactions=[files["interactions"]]))
    files_written = read_manifest(open_store(outcome.artifact_uri, s3=s3)).files
    assert (ITEM_INDEX in files_written) == (kind == "hnsw")
    assert set(IVF_FILES) | {IVF_RECALL} <= files_written.keys() or kind != "ivf"
    assert set(SCANN_FILES) | {SCANN_RECALL} <= files_written.keys() or kind != "scann"
    return outcome.artifact_uri


@pytest.mark.parametrize("kind", ["ivf", "scann", "hnsw"])
async def test_a_trained_index_serves_lists_without_seen_items(
    kind: str,
    make_settings: Callable[..., WorkerSettings],
    producer: AIOKafkaProducer,
    redis: Redis,
    redis_settings: RedisSettings,
    kafka_settings: KafkaSettings,
    s3_root: str,
    s3_settings: S3Settings,
    tmp_path: Path,
) -> None:
    uri = train_with_index(s3_root, s3_settings, tmp_path, kind)
    # A target every kind's table reaches on this 600-item catalog (a ScaNN build's recall at
    # half its 24 leaves varies from build to build; the choice itself: tests/unit/worker).
    settings = make_settings(uri, top_n=TOP_N, ann_min_items=0, ann_recall=0.5)
    now = datetime.now(UTC)
    events = [
        UserAction(
            event_id=f"e{n}",
            user_id=f"u{n % 5}",
            item_id=f"i{(n * 7) % 600}",
            action=ActionType.VIEW,
            ts=now + timedelta(seconds=n),
        )
        for n in range(30)
    ]
    async with running(settings) as handle:
        await produce(producer, kafka_settings.topics.user_actions, events)

        async def lists() -> list[RecommendationList | None]:
            keys = redis_settings.keys
            return [await read_list(redis, keys, MODEL, f"u{u}") for u in range(5)]

        async def all_written() -> bool:
            found = await lists()
            return all(r is not None and r.event_id == f"e{25 + i}" for i, r in enumerate(found))

        await until(all_written, what="the five users' lists from their last events")
        model = handle.worker.models.current
        assert model.selector.indexed_queries >= 5
        assert await metric(handle.http, "reco_worker_indexed_queries_total") >= 5
        # The IVF lists probed or ScaNN leaves searched, as the trained index's recall
        # curve gives them, exported.
        probes = await metric(handle.http, "reco_worker_index_probes")
        assert probes == model.selector.probes
        assert (probes > 0) == (kind != "hnsw")
        for user, listed in enumerate(await lists()):
            assert listed is not None
            seen = {e.item_id for e in events if e.user_id == f"u{user}"}
            row = model.user_index.get(f"u{user}")
            if row is not None:
                seen |= set(model.item_ids[model.user_items.of(row)].tolist())
            assert len(listed.items) == TOP_N
            assert not seen & set(listed.items)
            assert listed.scores == sorted(listed.scores, reverse=True)
