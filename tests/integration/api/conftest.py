"""Fixtures for the API's integration tests: a private Redis and the API as a process."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_procs import ApiProcess, RedisServer, StartApi

from reco_common.contracts import RedisKeys


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/stack.sh install puts it on PATH)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def keys(unique: str) -> RedisKeys:
    return RedisKeys(f"t{unique}")


@pytest.fixture
def start_api(redis_server: RedisServer, keys: RedisKeys, tmp_path: Path) -> Iterator[StartApi]:
    started: list[ApiProcess] = []

    def start(**api: str) -> ApiProcess:
        log = tmp_path / f"api-{len(started)}.log"
        process = ApiProcess(redis_url=redis_server.url, key_prefix=keys.prefix, log=log, **api)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.close()
