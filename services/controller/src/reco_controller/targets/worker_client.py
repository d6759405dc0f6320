"""The client of one worker's model-control endpoint (the ``local`` target's only transport).

``GET  {worker}/v1/model`` → ``{"version", "model_uri", "loading", "last_error", ...}``: what the
worker serves, what it is loading, and its last failed load;
``POST {worker}/v1/model`` with ``{"model_uri": ...}`` and a bearer token: load that model in
the background (202), or nothing to do (200). See services/worker (``reco_worker.http``).
"""

from __future__ import annotations

from typing import Final

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

MODEL_PATH: Final = "/v1/model"


class LoadError(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    model_uri: str
    error: str


class WorkerModel(BaseModel):
    """What a worker reports it serves (``None`` before its first model); other fields ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())

    version: str | None = None
    model_uri: str | None = None
    loading: str | None = None
    last_error: LoadError | None = None

    def refused(self, uri: str) -> str | None:
        """Why this worker failed to load ``uri``, once it is no longer trying."""
        failure = self.last_error
        if failure is None or failure.model_uri != uri or uri in (self.loading, self.model_uri):
            return None
        return failure.error


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
