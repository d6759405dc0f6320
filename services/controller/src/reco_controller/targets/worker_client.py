"""The client of one worker's model-control endpoint (the ``local`` target's only transport).

``GET  {worker}/v1/model`` → ``{"version": ..., "model_uri": ...}``: what the worker serves;
``POST {worker}/v1/model`` with ``{"model_uri": ...}`` and a bearer token: load that model.
"""

from __future__ import annotations

from typing import Final

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

MODEL_PATH: Final = "/v1/model"


class WorkerModel(BaseModel):
    """What a worker reports it serves (``None`` before its first model)."""

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    version: str | None = None
    model_uri: str | None = None


class WorkerReplyError(RuntimeError):
    """The worker answered, but not with what the endpoint promises."""


class ModelControlClient:
    def __init__(self, *, http: httpx.AsyncClient, base_url: str) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + MODEL_PATH

    @property
    def url(self) -> str:
        return self._url

    async def current(self) -> WorkerModel:
        response = await self._http.get(self._url)
        response.raise_for_status()
        try:
            return WorkerModel.model_validate_json(response.content)
        except ValidationError as exc:
            raise WorkerReplyError(f"GET {self._url}: unexpected reply: {exc}") from None

    async def load(self, model_uri: str) -> None:
        """Ask the worker to load ``model_uri``; raises ``httpx.HTTPStatusError`` if refused."""
        response = await self._http.post(self._url, json={"model_uri": model_uri})
        response.raise_for_status()
