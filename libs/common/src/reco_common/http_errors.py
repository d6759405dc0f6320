"""One JSON error shape for every 4xx and 5xx a reco service sends, and the handlers for it.

``{"error": {"status": 422, "code": "invalid_request", "message": "...", "details": [...]}}``:
FastAPI's validation errors, Starlette's 404/405, a service's own :class:`HttpError` and
unexpected exceptions all answer in this shape, never with a stack trace. Every service's app
calls :func:`install_error_handlers` (the API adds its rate limiter's 429 on top).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

JSON = "application/json"


class ErrorDetail(BaseModel):
    """One invalid field: where it is (``query.n``), why, and pydantic's error type."""

    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorResponse(BaseModel):
    """The body of every 4xx and 5xx response."""

    error: ErrorBody


class HttpError(Exception):
    """An error a service answers on purpose, with its status, a stable code and a message."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(
    *,
    status: int,
    code: str,
    message: str,
    details: Sequence[Mapping[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error shape as a response (orjson: it is on the API's request path)."""
    body = {"status": status, "code": code, "message": message, "details": list(details)}
    return Response(orjson.dumps({"error": body}), status, headers, media_type=JSON)


def code_for(status: int) -> str:
    """The stable code of a framework error: its status phrase in snake case (``not_found``)."""
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(
        status=exc.status, code=exc.code, message=exc.message, headers=exc.headers
    )


async def _framework_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(
        status=exc.status_code,
        code=code_for(exc.status_code),
        message=str(exc.detail),
        headers=exc.headers,
    )


def _field(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "request"


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": _field(err["loc"]), "message": err["msg"], "type": err["type"]}
        for err in exc.errors()
    ]
    first = details[0] if details else {"field": "request", "message": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return error_response(
        status=422,
        code="invalid_request",
        message=f"{first['field']}: {first['message']}{more}",
        details=details,
    )


async def _unexpected(_: Request, exc: Exception) -> Response:
    # Starlette re-raises after this response is sent, so uvicorn logs the traceback once and
    # a metrics middleware counts the 5xx; the client sees no trace.
    return error_response(status=500, code="internal_error", message="internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise to the one JSON shape."""
    app.add_exception_handler(HttpError, _http_error)
    app.add_exception_handler(HTTPException, _framework_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
