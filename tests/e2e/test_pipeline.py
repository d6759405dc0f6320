"""The whole loop as processes: train → publish → controller (local target) → worker → API.

One pipeline per module: a worker started without a model, the controller rolling it over
HTTP, the API, and ``reco-trainer train`` publishing the first model on Kafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_support import Launcher, now, quick_api, start_workers, until

from reco_common.artifact_cache import load_artifact
from reco_common.contracts import ActionType, ModelPublished, UserAction
from reco_common.storage import open_store
from reco_devkit import services
from reco_devkit.observe import ModelTopics, recommendations
from reco_devkit.procs import ServiceProcess
from reco_devkit.services import RunSpace
from reco_devkit.traffic import ActionSender, ShopFiles

# The claim is milliseconds (docs/benchmarks.md); the bound only keeps a broken run from hanging.
LIST_BOUND_S = 10.0


@dataclass
class Pipeline:
    space: RunSpace
    worker: ServiceProcess
    api_url: str
    model: ModelPublished
    sender: ActionSender

    async def listed(self, user_id: str) -> dict[str, Any] | None:
        async with httpx.AsyncClient() as http:
            listed: dict[str, Any] | None = await recommendations(http, self.api_url, user_id)
        return listed

    async def act(self, user_id: str, item_id: str, action: ActionType) -> UserAction:
        event = UserAction(
            event_id=f"{user_id}-{item_id}-{action.value}",
            user_id=user_id,
            item_id=item_id,
            action=action,
            ts=now(),
        )
        await self.sender.send([event])
        return event


@pytest.fixture(scope="module")
async def pipeline(stack: None, shop: ShopFiles, e2e_root: Path) -> AsyncIterator[Pipeline]:
    space = RunSpace.create(e2e_root, label="pipeline")
    launcher = Launcher()
    topics = ModelTopics(space.kafka)
    try:
        [worker] = await start_workers(launcher, space, 1, model_uri=None)
        _, api = await asyncio.gather(
            launcher.start(services.local_controller(space, [worker])),
            launcher.start(quick_api(space)),
        )
        await topics.start()
        job = services.train(
            space, interactions=shop.interactions_uri, item_features=shop.items_uri
        )
        job.start()
        assert await asyncio.to_thread(job.wait, timeout_s=300) == 0, job.tail()
        published = await topics.wait_published(count=1, timeout_s=30)
        await topics.wait_for(published.version, "succeeded", timeout_s=90)
        await asyncio.to_thread(worker.wait_ready, timeout_s=60)
        assert api.base_url is not None
        async with ActionSender(space.kafka) as sender:
            yield Pipeline(space, worker, api.base_url, published, sender)
    finally:
        await topics.stop()
        launcher.stop()


async def test_a_trained_model_is_rolled_out_and_served_with_its_version(
    pipeline: Pipeline, shop: ShopFiles, tmp_path: Path
) -> None:
    model = pipeline.model
    popular = load_artifact(open_store(model.artifact_uri), cache_dir=tmp_path).arrays.popular_items
    async with httpx.AsyncClient() as http:
        reply = await http.get(
            f"{pipeline.worker.base_url}/v1/model", headers=services.CONTROL_HEADERS
        )
        served = reply.json()
    newcomer = await pipeline.listed("newcomer-1")
    user, item = shop.users[0], shop.items[3]
    await pipeline.act(user, item, ActionType.PURCHASE)

    async def personalized() -> dict[str, Any] | None:
        listed = await pipeline.listed(user)
        return listed if listed and listed["source"] == "personalized" else None

    listed = await until(personalized, what=f"{user}'s own list", timeout_s=LIST_BOUND_S)

    assert model.artifact_uri.startswith(pipeline.space.store_uri)
    assert (served["version"], served["model_uri"]) == (model.version, model.artifact_uri)
    assert newcomer is not None
    assert (newcomer["source"], newcomer["model_version"]) == ("fallback", model.version)
    assert [i["item_id"] for i in newcomer["items"]] == popular[:10]
    ids = [i["item_id"] for i in listed["items"]]
    assert listed["model_version"] == model.version
    assert len(ids) == 10
    assert set(ids) <= set(shop.items)
    assert item not in ids  # what the user just bought is not recommended again


async def test_an_action_updates_the_served_list_within_a_bound(
    pipeline: Pipeline, shop: ShopFiles
) -> None:
    user = shop.users[1]
    await pipeline.act(user, shop.items[5], ActionType.VIEW)

    async def personalized() -> dict[str, Any] | None:
        listed = await pipeline.listed(user)
        return listed if listed and listed["source"] == "personalized" else None

    before = await until(personalized, what=f"{user}'s first list", timeout_s=LIST_BOUND_S)
    top = before["items"][0]["item_id"]
    await pipeline.act(user, top, ActionType.PURCHASE)

    async def updated() -> dict[str, Any] | None:
        listed = await pipeline.listed(user)
        return listed if listed and listed["computed_at"] != before["computed_at"] else None

    after = await until(updated, what=f"{user}'s list after buying {top}", timeout_s=LIST_BOUND_S)

    assert after["source"] == "personalized"
    assert top not in [i["item_id"] for i in after["items"]]
    assert after["model_version"] == pipeline.model.version
