"""Every 4xx/5xx in one JSON shape; the bounds of each parameter; the OpenAPI schema."""

from __future__ import annotations

from typing import Any

import pytest
from api_fakes import Api, FakeStore, MakeApi

URL = "/v1/users/u1/recommendations"


def assert_error_shape(body: dict[str, Any], status: int, code: str) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"status", "code", "message", "details"}
    assert (error["status"], error["code"]) == (status, code)
    assert error["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"n": 0}, "query.n"),
        ({"n": 101}, "query.n"),
        ({"n": "ten"}, "query.n"),
        ({"offset": -1}, "query.offset"),
        ({"offset": 1001}, "query.offset"),
        ({"exclude": [f"x{i}" for i in range(101)]}, "query.exclude"),
        ({"exclude": ["has space"]}, "query.exclude.0"),
        ({"model": "Not_A_Name"}, "query.model"),
    ],
)
async def test_each_parameter_is_bounded(api: Api, params: dict[str, Any], field: str) -> None:
    response = await api.client.get(URL, params=params)
    assert response.status_code == 422
    body = response.json()
    assert_error_shape(body, 422, "invalid_request")
    assert body["error"]["details"][0]["field"] == field
    assert body["error"]["message"].startswith(field)
    assert api.store.reads == 0


async def test_a_user_id_too_long_is_refused(api: Api) -> None:
    response = await api.client.get(f"/v1/users/{'u' * 257}/recommendations")
    body = response.json()
    assert_error_shape(body, 422, "invalid_request")
    assert body["error"]["details"][0]["field"] == "path.user_id"


async def test_every_invalid_parameter_is_reported_at_once(api: Api) -> None:
    response = await api.client.get(URL, params={"n": "x", "offset": -1, "model": "A B"})
    fields = [detail["field"] for detail in response.json()["error"]["details"]]
    assert sorted(fields) == ["query.model", "query.n", "query.offset"]
    assert response.json()["error"]["message"].endswith("(and 2 more)")


async def test_unknown_parameters_are_ignored_and_a_repeated_one_takes_its_last_value(
    api: Api,
) -> None:
    response = await api.client.get(f"{URL}?n=1&n=2&colour=red&exclude=i1&exclude=i2")
    assert response.status_code == 200
    assert [item["item_id"] for item in response.json()["items"]] == ["i3", "i4"]


async def test_bounds_follow_the_settings(make_api: MakeApi) -> None:
    async with make_api(max_n=5, default_n=5, max_exclude=1) as api:
        assert (await api.client.get(URL, params={"n": 5})).status_code == 200
        assert (await api.client.get(URL, params={"n": 6})).status_code == 422
        two = {"exclude": ["a", "b"]}
        assert (await api.client.get(URL, params=two)).status_code == 422
        schema = (await api.internal.get("/openapi.json")).json()
    parameters = schema["paths"]["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
    n = next(p for p in parameters if p["name"] == "n")
    assert (n["schema"]["maximum"], n["schema"]["default"]) == (5, 5)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("POST", URL, 405, "method_not_allowed"),
        ("DELETE", "/healthz", 405, "method_not_allowed"),
    ],
)
async def test_framework_errors_use_the_same_shape(
    api: Api, method: str, path: str, status: int, code: str
) -> None:
    response = await api.client.request(method, path)
    assert response.status_code == status
    assert_error_shape(response.json(), status, code)


async def test_an_unexpected_error_is_a_500_without_a_trace(
    make_api: MakeApi, store: FakeStore
) -> None:
    store.bug = RuntimeError("boom with secrets")
    async with make_api(raise_app_exceptions=False) as api:
        response = await api.client.get(URL)
    assert response.status_code == 500
    assert_error_shape(response.json(), 500, "internal_error")
    assert "boom" not in response.text


async def test_the_openapi_schema_documents_the_route_and_the_error_shape(api: Api) -> None:
    schema = (await api.internal.get("/openapi.json")).json()
    operation = schema["paths"]["/v1/users/{user_id}/recommendations"]["get"]
    for status in ("200", "404", "422", "503"):
        assert status in operation["responses"]
    ref = operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ErrorResponse")
    assert "/metrics" not in schema["paths"]
    docs = await api.internal.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


@pytest.mark.parametrize(
    "path", ["/metrics", "/docs", "/openapi.json", "/docs/assets/swagger-ui.css"]
)
async def test_the_public_port_serves_only_the_api(api: Api, path: str) -> None:
    """Metrics, docs and the schema are on the internal port (RECO_API_OPS_PORT) alone."""
    assert (await api.client.get(path)).status_code == 404
    assert (await api.internal.get(path)).status_code == 200
    for probe in ("/healthz", "/readyz"):  # a load balancer checks the port it sends to
        assert (await api.client.get(probe)).status_code == 200


async def test_the_docs_page_loads_swagger_ui_from_the_api_itself(api: Api) -> None:
    page = (await api.internal.get("/docs")).text
    assert '"/docs/assets/swagger-ui-bundle.js"' in page
    assert '"/docs/assets/swagger-ui.css"' in page
    script = await api.internal.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.text
