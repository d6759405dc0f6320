"""Helpers for the API unit tests: a fake store at our own boundary and a client holder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

import httpx
from prometheus_client import CollectorRegistry

from reco_api.store import StoreUnavailable
from reco_common.contracts import ActiveModel, RecommendationList, encode, encode_recommendations

MODEL = "default"
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def a_list(items: list[str], *, version: str = "v2", legacy: bool = False) -> bytes:
    """A stored list as the worker writes it (format 2), or as it did before (``legacy``)."""
    scores = [float(len(items) - i) for i in range(len(items))]
    value = RecommendationList(model_version=version, computed_at=NOW, items=items, scores=scores)
    return encode(value) if legacy else encode_recommendations(value)


def an_active_model(popular: list[str], *, version: str = "v2") -> bytes:
    return encode(
        ActiveModel(
            model_name=MODEL,
            version=version,
            artifact_uri=f"file:///models/{MODEL}/{version}",
            activated_at=NOW,
            popular_items=popular,
            popular_scores=[0.5] * len(popular),
        )
    )


class FakeStore:
    """The :class:`reco_api.store.Store` boundary, holding raw values like Redis would."""

    def __init__(self) -> None:
        self.lists: dict[tuple[str, str], bytes] = {}
        self.active: dict[str, bytes] = {}
        self.down = False
        self.bug: Exception | None = None
        self.reads = 0
        self.active_reads = 0

    async def read_list(self, model_name: str, user_id: str) -> bytes | None:
        self._answer()
        return self.lists.get((model_name, user_id))

    async def read_active(self, model_name: str) -> bytes | None:
        self._answer()
        self.active_reads += 1
        return self.active.get(model_name)

    def _answer(self) -> None:
        self.reads += 1
        if self.down:
            raise StoreUnavailable("connection refused")
        if self.bug is not None:
            raise self.bug

    async def ping(self) -> bool:
        return not self.down


class Api:
    """A client on the public app and one on the internal app, with the store, the draining
    flag and the metrics registry they share."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        store: FakeStore,
        draining: asyncio.Event,
        registry: CollectorRegistry,
        internal: httpx.AsyncClient,
    ) -> None:
        self.client = client
        self.internal = internal
        self.store = store
        self.draining = draining
        self.registry = registry

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


MakeApi = Callable[..., AbstractAsyncContextManager[Api]]
