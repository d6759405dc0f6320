"""Unit fixtures for the API: the app over a fake store (our own boundary), no network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from api_fakes import MODEL, Api, FakeStore, MakeApi, a_list, an_active_model
from prometheus_client import CollectorRegistry

from reco_api.app import create_app, create_internal_app
from reco_api.metrics import ApiMetrics
from reco_api.settings import ApiSettings


@pytest.fixture
def store() -> FakeStore:
    store = FakeStore()
    store.active[MODEL] = an_active_model(["p1", "p2", "p3", "p4"])
    store.lists[(MODEL, "u1")] = a_list(["i1", "i2", "i3", "i4", "i5"])
    return store


@pytest.fixture
def make_api(store: FakeStore) -> MakeApi:
    @asynccontextmanager
    async def make(*, raise_app_exceptions: bool = True, **overrides: Any) -> AsyncIterator[Api]:
        registry = CollectorRegistry()
        draining = asyncio.Event()
        app = create_app(
            # Read the active record with every request unless a test says otherwise.
            settings=ApiSettings(**({"active_refresh_s": 0} | overrides)),
            store=store,
            draining=draining,
            metrics=ApiMetrics.create(registry),
            registry=registry,
        )
        transport = httpx.ASGITransport(
            app=app, client=("10.0.0.7", 4242), raise_app_exceptions=raise_app_exceptions
        )
        internal = httpx.ASGITransport(app=create_internal_app(app.app, registry=registry))
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://api") as client,
            httpx.AsyncClient(transport=internal, base_url="http://api-ops") as ops,
        ):
            yield Api(client, store, draining, registry, ops)

    return make


@pytest.fixture
async def api(make_api: MakeApi) -> AsyncIterator[Api]:
    async with make_api() as api:
        yield api
