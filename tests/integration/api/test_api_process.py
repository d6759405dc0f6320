"""The API as a real process over a real Redis: serving, SIGTERM drain (on both HTTP servers),
Redis outage."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from api_procs import Load, RedisServer, StartApi, seed, stop_when_not_ready

from reco_common.contracts import RedisKeys

DRAIN_S = 4.0
SHUTDOWN_TIMEOUT_S = 10.0
# Interpreter start-up is not part of the bound; leaving the interpreter is, give or take.
EXIT_SLACK_S = 3.0


async def test_serves_what_the_worker_wrote(
    redis_server: RedisServer, keys: RedisKeys, start_api: StartApi
) -> None:
    await seed(redis_server, keys.prefix, users=3, popular=["p1", "p2", "p3"])
    api = start_api()
    async with httpx.AsyncClient(base_url=api.base_url) as client:
        own = (await client.get("/v1/users/u2/recommendations", params={"n": 2})).json()
        newcomer = (await client.get("/v1/users/u99/recommendations")).json()
        unknown = await client.get("/v1/users/u2/recommendations", params={"model": "other"})
        ready = await client.get("/readyz")
        public_metrics = await client.get("/metrics")
    async with httpx.AsyncClient(base_url=api.ops_url) as ops:
        metrics = (await ops.get("/metrics")).text
        internal_docs = await ops.get("/docs")
    assert (own["source"], own["model_version"]) == ("personalized", "v1")
    assert [item["item_id"] for item in own["items"]] == ["i2-0", "i2-1"]
    assert (newcomer["source"], [i["item_id"] for i in newcomer["items"]]) == (
        "fallback",
        ["p1", "p2", "p3"],
    )
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "model_not_found")
    assert ready.status_code == 200
    # The public port serves the API only; metrics and docs are on the internal port.
    assert public_metrics.status_code == 404
    assert internal_docs.status_code == 200
    # Three lists and two models' active records (each kept in process once read).
    assert "reco_api_redis_latency_seconds_count 5.0" in metrics
    assert 'reco_api_fallbacks_total{reason="no_list"} 1.0' in metrics


@pytest.mark.parametrize("server", ["granian", "uvicorn"])
async def test_sigterm_drains_with_no_failed_request_and_exits_0_within_the_bound(
    redis_server: RedisServer, keys: RedisKeys, start_api: StartApi, server: str
) -> None:
    await seed(redis_server, keys.prefix, users=100, popular=["p1", "p2"])
    api = start_api(drain_s=str(DRAIN_S), shutdown_timeout_s=str(SHUTDOWN_TIMEOUT_S), server=server)
    load = Load(api.base_url, clients=8, users=120)
    running = asyncio.create_task(load.run())
    watching = asyncio.create_task(stop_when_not_ready(api.base_url, load.stop, timeout_s=90))
    await load.wait_for(lambda: load.count(200) >= 300, what="300 answers before SIGTERM")

    api.terminate()
    await watching
    await running
    async with httpx.AsyncClient(base_url=api.base_url) as client:
        ready = await client.get("/readyz")
        served = await client.get("/v1/users/u1/recommendations")
    exit_code = await asyncio.to_thread(api.proc.wait, SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S)

    assert [o for o in load.outcomes if o.status != 200] == []
    assert (ready.status_code, ready.json()["checks"]["not_draining"]) == (503, False)
    assert served.status_code == 200, "still serving during the drain"
    assert exit_code == 0
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=api.base_url) as client:
            await client.get("/healthz")
    log = api.log.read_text()
    assert "Shutting down" in log
    assert "grace period" not in log, "stop() overran its bound"


async def test_redis_outage_answers_503_then_recovers_by_itself(
    redis_server: RedisServer, keys: RedisKeys, start_api: StartApi
) -> None:
    await seed(redis_server, keys.prefix, users=50, popular=["p1"])
    api = start_api(redis_timeout_s="0.25")
    load = Load(api.base_url, clients=4, users=60, pause_s=0.005)
    running = asyncio.create_task(load.run())
    async with httpx.AsyncClient(base_url=api.base_url, timeout=5) as probe:
        await load.wait_for(lambda: load.count(200) >= 100, what="100 answers before the outage")

        redis_server.kill()
        down = len(load.outcomes)
        await load.wait_for(lambda: load.count(503, since=down) >= 20, what="503s while down")
        not_ready = await probe.get("/readyz")

        redis_server.start()
        back = len(load.outcomes)
        await load.wait_for(lambda: load.count(200, since=back) >= 100, what="recovery")
        ready = await probe.get("/readyz")
    load.stop.set()
    await running

    assert {o.status for o in load.outcomes} == {200, 503}, "only answers, no hang or reset"
    assert {o.code for o in load.outcomes if o.status == 503} == {"store_unavailable"}
    assert (not_ready.status_code, not_ready.json()["checks"]["redis"]) == (503, False)
    assert ready.status_code == 200
    assert api.proc.poll() is None
    assert api.log.read_text().count("Redis unavailable") >= 1
