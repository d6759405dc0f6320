"""Fixtures of the worker's integration tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from worker_stack import TOKEN, publish

from reco_common.settings import CommonSettings, KafkaSettings, RedisSettings, S3Settings
from reco_common.storage import ObjectStore
from reco_worker.settings import WorkerSettings


@pytest.fixture
def model_v1(s3_store: ObjectStore) -> str:
    return publish(s3_store, "v1", seed=1)


@pytest.fixture
def make_settings(
    kafka_settings: KafkaSettings,
    redis_settings: RedisSettings,
    s3_settings: S3Settings,
    tmp_path: Path,
) -> Callable[..., WorkerSettings]:
    def make(model_uri: str | None, **overrides: Any) -> WorkerSettings:
        values: dict[str, Any] = {
            "common": CommonSettings(kafka=kafka_settings, redis=redis_settings, s3=s3_settings),
            "model_uri": model_uri,
            "cache_dir": tmp_path / "cache",
            "http_host": "127.0.0.1",
            "http_port": 0,
            "control_token": TOKEN,
            "top_n": 20,
            "history_len": 30,
        }
        return WorkerSettings(**(values | overrides))

    return make
