"""The one JSON error shape, as any service's app answers it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, Query

from reco_common.http_errors import HttpError, install_error_handlers


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/things")
    async def things(n: Annotated[int, Query(ge=1)], m: Annotated[int, Query(ge=1)]) -> int:
        return n + m

    @app.get("/teapot")
    async def teapot() -> None:
        raise HttpError(status=418, code="teapot", message="short and stout", headers={"X": "y"})

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("boom with secrets")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        yield client


def error_of(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"status", "code", "message", "details"}
    assert (body["error"]["status"], body["error"]["code"]) == (status, code)
    error: dict[str, Any] = body["error"]
    return error


async def test_an_error_raised_on_purpose_keeps_its_code_and_headers(
    client: httpx.AsyncClient,
) -> None:
    reply = await client.get("/teapot")
    assert error_of(reply, 418, "teapot")["message"] == "short and stout"
    assert reply.headers["X"] == "y"


async def test_every_invalid_field_is_detailed(client: httpx.AsyncClient) -> None:
    error = error_of(await client.get("/things", params={"n": 0}), 422, "invalid_request")
    assert [d["field"] for d in error["details"]] == ["query.n", "query.m"]
    assert error["message"].startswith("query.n: ")
    assert error["message"].endswith("(and 1 more)")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [("GET", "/nowhere", 404, "not_found"), ("DELETE", "/things", 405, "method_not_allowed")],
)
async def test_framework_errors_use_the_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int, code: str
) -> None:
    error_of(await client.request(method, path), status, code)


async def test_an_unexpected_error_is_a_500_without_a_trace(client: httpx.AsyncClient) -> None:
    reply = await client.get("/bug")
    error_of(reply, 500, "internal_error")
    assert "boom" not in reply.text
