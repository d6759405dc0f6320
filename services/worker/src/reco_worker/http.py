"""The worker's small HTTP port: liveness, readiness, Prometheus metrics and model control.

- ``GET /healthz``: the process and its event loop answer;
- ``GET /readyz``: 200 only when a model is loaded, the Kafka consumer runs and Redis answers;
- ``GET /metrics``: Prometheus text format;
- ``GET /v1/model``, ``POST /v1/model`` (bearer token): report the active model, or load a new
  ``model_uri`` in the background and swap it in when verified (docs/worker.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, Protocol

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, SecretStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from reco_common.contracts import (
    MODEL_CONTROL_PATH,
    ModelLoadFailure,
    ModelLoadRequest,
    WorkerModelState,
)
from reco_worker.model_store import ModelStatus

logger = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]


class ModelControl(Protocol):
    """What the endpoints need of :class:`reco_worker.model_store.ModelStore`."""

    def status(self) -> ModelStatus: ...

    def request(self, uri: str) -> None: ...


# --------------------------------------------------------------------------- schemas


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]


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
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid bearer token is required")


Models = Annotated[ModelControl, Depends(_models)]
Authorized = Depends(_authorized)


# --------------------------------------------------------------------------- routers

health = APIRouter(tags=["health"])


@health.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/readyz", response_model=Readiness)
async def readyz(request: Request, response: Response) -> Readiness:
    checks: dict[str, Check] = request.app.state.checks
    results = {name: await check() for name, check in checks.items()}
    ready = all(results.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(ready=ready, checks=results)


metrics = APIRouter(tags=["metrics"])


@metrics.get("/metrics")
async def prometheus() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


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


# --------------------------------------------------------------------------- app and server


def create_app(*, models: ModelControl, token: SecretStr, checks: dict[str, Check]) -> FastAPI:
    app = FastAPI(title="reco-worker", docs_url=None, redoc_url=None)
    app.state.models = models
    app.state.token = token
    app.state.checks = checks
    for router in (health, metrics, model):
        app.include_router(router)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return app


_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    code = _CODES.get(exc.status_code, "error")
    return _error(exc.status_code, code, str(exc.detail), headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3])
    return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_request", where)


def _error(
    status_code: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the worker's lifecycle owns SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """uvicorn serving ``app`` as a task of the worker's event loop."""

    def __init__(self, app: FastAPI, *, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        sockets: list[Any] = [s for srv in self._server.servers for s in srv.sockets]
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="http")
        while not self._server.started:  # bounded: serve() either starts or ends the task
            if self._task.done():
                await self._task
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        logger.info("HTTP on port %d: /healthz /readyz /metrics /v1/model", self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
