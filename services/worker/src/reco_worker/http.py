"""The worker's HTTP port: the shared ops surface and the model-control endpoints.

- ``GET /healthz``, ``GET /readyz``, ``GET /metrics``: :mod:`reco_common.ops` (ready when a
  model is loaded, the Kafka consumer runs and Redis answers: :class:`reco_worker.worker.Worker`
  registers the checks);
- ``GET /v1/model``, ``POST /v1/model`` (both need the bearer token): report the active model, or load a new
  ``model_uri`` in the background and swap it in when verified (docs/worker.md). A load must carry
  the ``manifest_sha256`` pin of the model's announcement (422 without it) unless unpinned loads
  were allowed, which only ``RECO_ENV=dev`` permits (:class:`reco_worker.settings.WorkerSettings`).

Errors answer in the shared shape (:mod:`reco_common.http_errors`).
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import SecretStr

from reco_common.contracts import (
    MODEL_CONTROL_PATH,
    ContractError,
    ModelLoadFailure,
    ModelLoadRequest,
    WorkerModelState,
    decode,
    encode,
)
from reco_common.http_errors import ErrorResponse
from reco_common.ops import Readiness, ops_app
from reco_worker.model_store import ModelStatus

logger = logging.getLogger(__name__)


class ModelControl(Protocol):
    """What the endpoints need of :class:`reco_worker.model_store.ModelStore`."""

    def status(self) -> ModelStatus: ...

    def request(self, uri: str, *, manifest_sha256: str | None = None) -> None: ...


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
    if (
        scheme.lower() != "bearer"
        or not presented.strip()
        or not secrets.compare_digest(presented.encode(), token.get_secret_value().encode())
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


@model.get("", dependencies=[Authorized], responses={401: {"model": ErrorResponse}})
async def get_model(models: Models) -> Response:
    return _reply(_state(models.status()))


@model.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[Authorized],
    responses={200: {"description": "Already served"}, 401: {"model": ErrorResponse}},
)
async def post_model(request: Request, models: Models) -> Response:
    """Load ``model_uri`` in the background (202), or nothing to do when it is served (200)."""
    body = await _load_request(request)
    pin = body.manifest_sha256 if isinstance(body.manifest_sha256, str) else None
    current = models.status()
    served = current.active is not None and current.active.uri == body.model_uri
    if pin is None and not served and not request.app.state.allow_unpinned:
        error = {"type": "missing", "loc": ("body", "manifest_sha256"), "input": None}
        raise RequestValidationError([{**error, "msg": "a load must be pinned (manifest_sha256)"}])
    # Also when it is served: the latest request wins over a load of another model in progress.
    models.request(body.model_uri, manifest_sha256=pin)
    current = models.status()
    if served:
        return _reply(_state(current))
    logger.info("model %s requested over HTTP", body.model_uri)
    return _reply(_state(current), status.HTTP_202_ACCEPTED)


async def _load_request(request: Request) -> ModelLoadRequest:
    """The body, decoded with the contract's codec; a 422 naming the field when it is not one."""
    try:
        return decode(ModelLoadRequest, await request.body())
    except ContractError as exc:
        error = {"type": "contract", "loc": ("body",), "msg": exc.reason, "input": None}
        raise RequestValidationError([error]) from None


def _reply(state: WorkerModelState, status_code: int = status.HTTP_200_OK) -> Response:
    """A model-control answer, encoded with the contract's codec."""
    return Response(encode(state), status_code=status_code, media_type="application/json")


# --------------------------------------------------------------------------- app


def create_app(
    *, models: ModelControl, token: SecretStr, readiness: Readiness, allow_unpinned: bool = False
) -> FastAPI:
    """``allow_unpinned``: accept a ``POST /v1/model`` without ``manifest_sha256`` (dev only)."""
    app = ops_app(title="reco-worker", readiness=readiness)
    app.state.models = models
    app.state.token = token
    app.state.allow_unpinned = allow_unpinned
    app.include_router(model)
    return app
