"""The end-to-end tier: the four services as real processes on the real dev stack.

Once per session: the dev stack (scripts/stack.sh up, idempotent), a small synthetic shop, and
two models trained by ``reco-trainer train --no-publish`` into a session ``file://`` store (the
pipeline test trains and publishes its own). Per test: a :class:`RunSpace` (its own topic
prefix, Redis key prefix and directory) and a launcher that stops every process it started;
when a test fails, the tail of each process log is printed with it.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from e2e_support import Launcher, Model
from redis.asyncio import Redis

from reco_common.artifact import read_manifest
from reco_common.redis_store import connect
from reco_common.storage import open_store
from reco_devkit import services
from reco_devkit.services import RunSpace
from reco_devkit.traffic import ShopFiles, prepare_shop

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack.sh"
TRAIN_TIMEOUT_S = 300
FAILED = pytest.StashKey[bool]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(FAILED, False)
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture(scope="session")
def stack() -> None:
    """Kafka, Redis and the S3 server, started unless they run."""
    subprocess.run([str(STACK), "up"], check=True, timeout=600)


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def shop(e2e_root: Path) -> ShopFiles:
    """800 users, 200 items; the newest 20 % of the log is kept for live traffic."""
    return prepare_shop(e2e_root / "shop", interactions=20_000, seed=3)


@pytest.fixture(scope="session")
async def models(stack: None, shop: ShopFiles, e2e_root: Path) -> tuple[Model, Model]:
    """Two versions of the model, trained concurrently (two seeds); the older one first."""
    space = RunSpace.create(e2e_root, label="models")
    jobs = [
        services.train(
            space,
            interactions=shop.interactions_uri,
            item_features=shop.items_uri,
            publish=False,
            log_name=f"train-seed-{seed}",
            params__seed=str(seed),
            params__threads="1",
        )
        for seed in (1, 2)
    ]
    for job in jobs:
        job.start()
    codes = await asyncio.gather(
        *(asyncio.to_thread(job.wait, timeout_s=TRAIN_TIMEOUT_S) for job in jobs)
    )
    assert codes == [0, 0], "\n".join(job.tail() for job in jobs)
    versions = sorted((space.root / "store" / "models" / space.model_name).iterdir())
    found = [Model(uri=path.as_uri(), version=path.name) for path in versions]
    found.sort(key=lambda m: read_manifest(open_store(m.uri)).created_at)
    assert len(found) == 2, found
    return found[0], found[1]


@pytest.fixture
def space(stack: None, e2e_root: Path) -> RunSpace:
    return RunSpace.create(e2e_root, label="e2e")


@pytest.fixture
def launcher(request: pytest.FixtureRequest) -> Iterator[Launcher]:
    launcher = Launcher()
    try:
        yield launcher
    finally:
        launcher.stop()
        if request.node.stash.get(FAILED, False):
            for process in launcher.started:
                print(f"\n----- {process.name}: {process.log_path}\n{process.tail(40)}")


@pytest.fixture
async def redis(space: RunSpace) -> AsyncIterator[Redis]:
    client = connect(space.redis)
    try:
        yield client
    finally:
        await client.aclose()
