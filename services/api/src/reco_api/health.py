"""``/healthz`` (liveness: the process answers) and ``/readyz`` (Redis reachable, not draining).

Readiness fails the moment SIGTERM arrives (``draining`` is set by the server), so that the
load balancer stops sending traffic while the process keeps serving through the drain period.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from reco_api.errors import ApiError, ErrorResponse
from reco_api.store import Store


class Status(BaseModel):
    status: str


class Readiness:
    """The process's readiness: the draining flag the server sets, and the store's ping."""

    def __init__(self, *, store: Store, draining: asyncio.Event) -> None:
        self._store = store
        self._draining = draining

    async def check(self) -> None:
        if self._draining.is_set():
            raise ApiError(status=503, code="draining", message="shutting down")
        if not await self._store.ping():
            raise ApiError(status=503, code="store_unavailable", message="Redis is unreachable")


async def _readiness(request: Request) -> Readiness:
    readiness: Readiness = request.app.state.readiness
    return readiness


ReadinessDep = Annotated[Readiness, Depends(_readiness)]


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Status:
        return Status(status="ok")

    @router.get(
        "/readyz",
        summary="Readiness: Redis reachable and not shutting down",
        responses={503: {"model": ErrorResponse, "description": "Not ready"}},
    )
    async def readyz(readiness: ReadinessDep) -> Status:
        await readiness.check()
        return Status(status="ready")

    return router
