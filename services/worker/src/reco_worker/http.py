"""The worker's HTTP port: the shared ops surface and the model-control endpoints.

- ``GET /healthz``, ``GET /readyz``, ``GET /metrics``: :mod:`reco_common.ops` (ready when a
  model is loaded, the Kafka consumer runs and Redis answers: :class:`reco_worker.worker.Worker`
  registers the checks);
- ``GET /v1/model``, ``POST /v1/model`` (bearer token): report the active model, or load a new
  ``model_uri`` in the background and swap it in when verified (docs/worker.md).

Errors answer in the shared shape (:mod:`reco_common.http_errors`).
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response, status
from pydantic import SecretStr

from reco_common.contracts import (
    MODEL_CONTROL_PATH,
    ModelLoadFailure,
    ModelLoadRequest,
    WorkerModelState,
)
from reco_common.http_errors import ErrorResponse
from reco_common.ops import Readiness, ops_app
from reco_worker.model_store import ModelStatus

logger = logging.getLogger(__name__)


class ModelControl(Protocol):
    """What the endpoints need of :class:`reco_worker.model_store.ModelStore`."""

    def status(self) -> ModelStatus: ...

    def request(self, uri: str) -> None: ...


def _state(status_: ModelStatus) -> WorkerModelState:
    model, failure = status_.active, status_.last_error
    return WorkerModelState(
        model_name=model.name if model else None,
        version=model.version if model else None,
        model_uri=model.uri if model else None,
        n_items=model.n_items if model else None,
        activated_at=status_.activated_at,
        loading=status_.loading,
        last_error=None
        if failure is None
        else ModelLoadFailure(model_uri=failure.uri, error=failure.error, at=failure.at),
    )


# --------------------------------------------------------------------------- dependencies


def _models(request: Request) -> ModelControl:
    models: ModelControl = request.app.state.models
    return models


def _authorized(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    token: SecretStr = request.app.state.token
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        presented.encode(), token.get_secret_value().encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


Models = Annotated[ModelControl, Depends(_models)]
Authorized = Depends(_authorized)


# --------------------------------------------------------------------------- routers

model = APIRouter(prefix=MODEL_CONTROL_PATH, tags=["model"])


@model.get("", response_model=WorkerModelState)
async def get_model(models: Models) -> WorkerModelState:
    return _state(models.status())


@model.post(
    "",
    response_model=WorkerModelState,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Authorized],
    responses={200: {"model": WorkerModelState}, 401: {"model": ErrorResponse}},
)
async def post_model(
    body: ModelLoadRequest, models: Models, response: Response
) -> WorkerModelState:
    """Load ``model_uri`` in the background (202), or nothing to do when it is served (200)."""
    current = models.status()
    if current.active is not None and current.active.uri == body.model_uri:
        response.status_code = status.HTTP_200_OK
        return _state(current)
    models.request(body.model_uri)
    logger.info("model %s requested over HTTP", body.model_uri)
    return _state(models.status())


# --------------------------------------------------------------------------- app


def create_app(*, models: ModelControl, token: SecretStr, readiness: Readiness) -> FastAPI:
    app = ops_app(title="reco-worker", readiness=readiness)
    app.state.models = models
    app.state.token = token
    app.include_router(model)
    return app
