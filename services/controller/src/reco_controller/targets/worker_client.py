"""The client of one worker's model-control endpoint (the ``local`` target's only transport).

``GET  {worker}/v1/model`` → ``{"version", "model_uri", "loading", "last_error", ...}``: what the
worker serves, what it is loading, and its last failed load;
``POST {worker}/v1/model`` with ``{"model_uri": ...}`` and a bearer token: load that model in
the background (202), or nothing to do (200). The payloads are in ``reco_common.contracts``.
"""

from __future__ import annotations

import httpx

from reco_common.contracts import (
    MODEL_CONTROL_PATH,
    ContractError,
    ModelLoadRequest,
    WorkerModelState,
    decode,
    encode,
)


def refused(state: WorkerModelState, uri: str) -> str | None:
    """Why this worker failed to load ``uri``, once it is no longer trying."""
    failure = state.last_error
    if failure is None or failure.model_uri != uri or uri in (state.loading, state.model_uri):
        return None
    return failure.error


class WorkerReplyError(RuntimeError):
    """The worker answered, but not with what the endpoint promises."""


class ModelControlClient:
    def __init__(self, *, http: httpx.AsyncClient, base_url: str) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + MODEL_CONTROL_PATH

    @property
    def url(self) -> str:
        return self._url

    async def current(self) -> WorkerModelState:
        response = await self._http.get(self._url)
        response.raise_for_status()
        try:
            return decode(WorkerModelState, response.content)
        except ContractError as exc:
            raise WorkerReplyError(f"GET {self._url}: unexpected reply: {exc.reason}") from None

    async def load(self, model_uri: str, *, manifest_sha256: str | None = None) -> None:
        """Ask the worker to load ``model_uri`` (pinned to ``manifest_sha256`` when known);
        raises ``httpx.HTTPStatusError`` if refused."""
        request = (
            ModelLoadRequest(model_uri=model_uri, manifest_sha256=manifest_sha256)
            if manifest_sha256
            else ModelLoadRequest(model_uri=model_uri)
        )
        response = await self._http.post(
            self._url, content=encode(request), headers={"Content-Type": "application/json"}
        )
        response.raise_for_status()
