"""The shared ops surface: readiness from registered checks, liveness, metrics, the error shape."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from reco_common.ops import OpsServer, Readiness, ops_app


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("reco_test_things", "Things counted", registry=registry).inc(3)
    return registry


class Flag:
    """An async check whose answer the test sets."""

    def __init__(self) -> None:
        self.up = True

    async def __call__(self) -> bool:
        return self.up


@pytest.fixture
def loaded() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@pytest.fixture
def flag() -> Flag:
    return Flag()


@pytest.fixture
async def client(
    loaded: asyncio.Event, flag: Flag, registry: CollectorRegistry
) -> AsyncIterator[httpx.AsyncClient]:
    readiness = Readiness()
    readiness.add("model", loaded)
    readiness.add("redis", flag)
    readiness.add("leader", Flag(), required=False)
    app = ops_app(title="test", readiness=readiness, registry=registry)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
        yield client


async def test_liveness_answers(client: httpx.AsyncClient) -> None:
    reply = await client.get("/healthz")
    assert (reply.status_code, reply.json()) == (200, {"status": "ok"})


async def test_ready_lists_every_check(client: httpx.AsyncClient) -> None:
    reply = await client.get("/readyz")
    assert (reply.status_code, reply.json()) == (
        200,
        {"ready": True, "checks": {"model": True, "redis": True, "leader": True}},
    )


async def test_an_event_check_gates_readiness_until_set(
    client: httpx.AsyncClient, loaded: asyncio.Event
) -> None:
    loaded.clear()
    reply = await client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json() == {
        "ready": False,
        "checks": {"model": False, "redis": True, "leader": True},
    }
    loaded.set()
    assert (await client.get("/readyz")).status_code == 200


async def test_a_callable_check_gates_readiness(client: httpx.AsyncClient, flag: Flag) -> None:
    flag.up = False
    reply = await client.get("/readyz")
    assert (reply.status_code, reply.json()["checks"]["redis"]) == (503, False)


async def test_an_informational_check_is_reported_without_gating() -> None:
    follower = Flag()
    follower.up = False
    readiness = Readiness()
    readiness.add("leader", follower, required=False)
    report = await readiness.report()
    assert (report.ready, report.checks) == (True, {"leader": False})


def test_a_check_name_is_registered_once(loaded: asyncio.Event) -> None:
    readiness = Readiness()
    readiness.add("model", loaded)
    with pytest.raises(ValueError, match="'model' is already registered"):
        readiness.add("model", loaded)


async def test_metrics_come_from_the_given_registry(client: httpx.AsyncClient) -> None:
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert "reco_test_things_total 3.0" in reply.text
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [("GET", "/nowhere", 404, "not_found"), ("POST", "/metrics", 405, "method_not_allowed")],
)
async def test_errors_use_the_shared_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int, code: str
) -> None:
    reply = await client.request(method, path)
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code


async def test_the_server_binds_serves_and_leaves_the_signals_alone(
    registry: CollectorRegistry,
) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    server = OpsServer(
        ops_app(title="test", readiness=Readiness(), registry=registry), host="127.0.0.1", port=0
    )
    await server.start()
    try:
        assert signal.getsignal(signal.SIGTERM) is handler
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/readyz")).json() == {"ready": True, "checks": {}}
    finally:
        await server.stop()
    assert signal.getsignal(signal.SIGTERM) is handler
