"""The HTTP port: probes, metrics, and the authenticated model-control endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr
from worker_models import random_arrays

from reco_common.ops import Readiness
from reco_worker.http import create_app
from reco_worker.metrics import WorkerMetrics
from reco_worker.model_store import LoadFailure, ModelStatus
from reco_worker.scoring import ServingModel

TOKEN = "s3cret-token"
SERVED = "s3://reco/models/shop/v1"


class FakeModels:
    """The endpoints' view of the model store: records requests, loads nothing."""

    def __init__(self, active: ServingModel | None) -> None:
        self.active = active
        self.requested: list[str] = []
        self.pins: list[str | None] = []
        self.failure: LoadFailure | None = None

    def status(self) -> ModelStatus:
        loading = self.requested[-1] if self.requested else None
        return ModelStatus(self.active, datetime.now(UTC), loading, self.failure)

    def request(self, uri: str, *, manifest_sha256: str | None = None) -> None:
        self.requested.append(uri)
        self.pins.append(manifest_sha256)


class Checks:
    def __init__(self) -> None:
        self.results = {"model": True, "kafka": True, "redis": True}

    def as_readiness(self) -> Readiness:
        readiness = Readiness()
        for name in self.results:
            readiness.add(name, self._check(name))
        return readiness

    def _check(self, name: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return self.results[name]

        return check


@pytest.fixture
def models() -> FakeModels:
    arrays = random_arrays(n_items=10, n_users=2, dim=2)
    return FakeModels(ServingModel(name="shop", version="v1", uri=SERVED, arrays=arrays))


@pytest.fixture
def checks() -> Checks:
    return Checks()


@asynccontextmanager
async def serving(
    models: FakeModels, checks: Checks, token: str = TOKEN, *, allow_unpinned: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        models=models,
        token=SecretStr(token),
        readiness=checks.as_readiness(),
        allow_unpinned=allow_unpinned,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        yield client


@pytest.fixture
async def client(models: FakeModels, checks: Checks) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(models, checks) as client:
        yield client


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_liveness_answers(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}


async def test_readiness_needs_every_check(client: httpx.AsyncClient, checks: Checks) -> None:
    assert (await client.get("/readyz")).status_code == 200
    checks.results["kafka"] = False
    reply = await client.get("/readyz")
    assert reply.status_code == 503
    assert reply.json() == {
        "ready": False,
        "checks": {"model": True, "kafka": False, "redis": True},
    }


async def test_metrics_are_exposed(client: httpx.AsyncClient) -> None:
    WorkerMetrics.create().freshness.observe(0.004)
    text = (await client.get("/metrics")).text
    assert "reco_worker_freshness_seconds_bucket" in text
    assert "reco_worker_events_consumed_total" in text


async def test_the_active_model_is_reported(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/model", headers=auth())).json()
    assert body["model_name"] == "shop"
    assert body["version"] == "v1"
    assert body["model_uri"] == SERVED
    assert body["loading"] is None


async def test_before_any_model_the_report_is_empty(checks: Checks) -> None:
    async with serving(FakeModels(None), checks) as client:
        body = (await client.get("/v1/model", headers=auth())).json()
    assert body["version"] is None
    assert body["model_uri"] is None


@pytest.mark.parametrize("headers", [{}, auth("wrong"), auth(""), auth("  ")])
async def test_reading_the_model_needs_the_token(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """The port is reachable from the monitoring namespace: the state is not for everyone."""
    reply = await client.get("/v1/model", headers=headers)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == "Bearer"


async def test_an_empty_configured_token_does_not_open_the_door(models: FakeModels) -> None:
    """Defence in depth behind the settings: ``Bearer `` alone never matches."""
    async with serving(models, Checks(), token="") as client:
        assert (await client.get("/v1/model", headers=auth(""))).status_code == 401


@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": TOKEN}, auth("")])
async def test_loading_a_model_needs_the_token(
    client: httpx.AsyncClient, models: FakeModels, headers: dict[str, str]
) -> None:
    reply = await client.post(
        "/v1/model", json={"model_uri": "s3://reco/models/shop/v2"}, headers=headers
    )
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "unauthorized"
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert models.requested == []


async def test_a_new_model_is_loaded_in_the_background(
    client: httpx.AsyncClient, models: FakeModels
) -> None:
    body = {"model_uri": "s3://reco/models/shop/v2", "manifest_sha256": "a" * 64}
    reply = await client.post("/v1/model", json=body, headers=auth())
    assert reply.status_code == 202
    assert reply.json()["version"] == "v1"
    assert reply.json()["loading"] == "s3://reco/models/shop/v2"
    assert models.requested == ["s3://reco/models/shop/v2"]
    assert models.pins == ["a" * 64]


async def test_an_unpinned_load_is_refused_by_default(
    client: httpx.AsyncClient, models: FakeModels
) -> None:
    reply = await client.post(
        "/v1/model", json={"model_uri": "s3://reco/models/shop/v2"}, headers=auth()
    )
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == "invalid_request"
    assert "manifest_sha256" in reply.text
    assert models.requested == []


async def test_an_unpinned_load_is_accepted_when_explicitly_allowed(
    models: FakeModels, checks: Checks
) -> None:
    async with serving(models, checks, allow_unpinned=True) as client:
        reply = await client.post(
            "/v1/model", json={"model_uri": "s3://reco/models/shop/v2"}, headers=auth()
        )
    assert reply.status_code == 202
    assert models.pins == [None]


async def test_a_load_request_carries_the_manifest_pin_to_the_store(
    client: httpx.AsyncClient, models: FakeModels
) -> None:
    body = {"model_uri": "s3://reco/models/shop/v2", "manifest_sha256": "b" * 64}
    assert (await client.post("/v1/model", json=body, headers=auth())).status_code == 202
    assert models.pins == ["b" * 64]
    bad = {"model_uri": "s3://reco/models/shop/v3", "manifest_sha256": "not-a-digest"}
    assert (await client.post("/v1/model", json=bad, headers=auth())).status_code == 422


async def test_the_served_model_answers_200_and_is_still_the_latest_request(
    client: httpx.AsyncClient, models: FakeModels
) -> None:
    """200: nothing to load; still passed on, so that it wins over another model's load in
    progress (the model store does not reload what it serves)."""
    reply = await client.post("/v1/model", json={"model_uri": SERVED}, headers=auth())
    assert reply.status_code == 200
    assert models.requested == [SERVED]


async def test_a_refused_model_is_reported(client: httpx.AsyncClient, models: FakeModels) -> None:
    models.failure = LoadFailure("s3://reco/models/shop/bad", "sha256 mismatch", datetime.now(UTC))
    body = (await client.get("/v1/model", headers=auth())).json()
    assert body["version"] == "v1"
    assert body["last_error"]["model_uri"] == "s3://reco/models/shop/bad"
    assert "sha256" in body["last_error"]["error"]


@pytest.mark.parametrize("payload", [{}, {"model_uri": ""}, {"model_uri": "x", "extra": 1}])
async def test_a_bad_request_gets_the_error_shape(
    client: httpx.AsyncClient, payload: dict[str, object]
) -> None:
    reply = await client.post("/v1/model", json=payload, headers=auth())
    assert reply.status_code == 422
    assert reply.json()["error"]["code"] == "invalid_request"


async def test_an_unknown_path_gets_the_error_shape(client: httpx.AsyncClient) -> None:
    reply = await client.get("/nope")
    assert reply.status_code == 404
    assert reply.json() == {
        "error": {"status": 404, "code": "not_found", "message": "Not Found", "details": []}
    }
