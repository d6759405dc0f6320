"""The API as a process on a real Redis Cluster: every user's list from the primary of its slot,
the model's record from its own slot, kept in process."""

from __future__ import annotations

from pathlib import Path

import httpx
from api_procs import ApiProcess, seed

from reco_common.contracts import RedisKeys
from reco_common.pipelined_cluster import slot_of

USERS = 60


async def test_the_api_serves_from_a_redis_cluster(
    redis_cluster: str, keys: RedisKeys, tmp_path: Path
) -> None:
    await seed(redis_cluster, keys.prefix, users=USERS, popular=["p1", "p2"])
    assert len({slot_of(keys.recommendations("default", f"u{n}")) for n in range(USERS)}) > 50
    api = ApiProcess(redis_url=redis_cluster, key_prefix=keys.prefix, log=tmp_path / "api.log")
    try:
        async with httpx.AsyncClient(base_url=api.base_url) as client:
            own = [
                (await client.get(f"/v1/users/u{n}/recommendations", params={"n": 1})).json()
                for n in range(USERS)
            ]
            newcomer = (await client.get("/v1/users/nobody/recommendations")).json()
            ready = await client.get("/readyz")
    finally:
        api.close()
    assert [(body["source"], body["items"][0]["item_id"]) for body in own] == [
        ("personalized", f"i{n}-0") for n in range(USERS)
    ]
    assert (newcomer["source"], [i["item_id"] for i in newcomer["items"]]) == (
        "fallback",
        ["p1", "p2"],
    )
    assert ready.status_code == 200
