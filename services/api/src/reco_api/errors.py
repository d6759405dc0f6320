"""The API's additions to the shared error shape (:mod:`reco_common.http_errors`).

The rate limiter's 429 answers in the shape too, and :data:`ERROR_RESPONSES` documents the
statuses the recommendations route can answer with.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from slowapi.errors import RateLimitExceeded
from starlette.responses import Response

from reco_common.http_errors import ErrorResponse, error_response


async def _rate_limited(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RateLimitExceeded)
    return error_response(
        status=429,
        code="rate_limited",
        message=f"rate limit exceeded: {exc.detail}",
        headers={"Retry-After": "1"},
    )


def install_rate_limit_handler(app: FastAPI) -> None:
    """Answer slowapi's refusals in the one JSON shape (the others: ``install_ops``)."""
    app.add_exception_handler(RateLimitExceeded, _rate_limited)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        401: "Missing or unknown API key (API keys are required outside RECO_ENV=dev)",
        404: "No model of that name is active",
        422: "A parameter is invalid",
        429: "The client's rate limit is exceeded (only when a limit is configured)",
        503: "The recommendation store is unreachable, or the default model's record is"
        " missing while it is written again; retry later",
    }.items()
}
