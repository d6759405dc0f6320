"""Liveness, readiness, API keys, the rate limit and the metrics endpoint."""

from __future__ import annotations

from api_fakes import Api, FakeStore, MakeApi
from pydantic import SecretStr

URL = "/v1/users/u1/recommendations"
ROUTE = "/v1/users/{user_id}/recommendations"


async def test_liveness_checks_nothing(api: Api, store: FakeStore) -> None:
    store.down = True
    api.draining.set()
    response = await api.client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_ready_when_redis_answers(api: Api) -> None:
    response = await api.client.get("/readyz")
    assert (response.status_code, response.json()) == (
        200,
        {"ready": True, "checks": {"redis": True, "not_draining": True, "active_records": True}},
    )


async def test_not_ready_while_redis_is_down_and_ready_again_after(
    api: Api, store: FakeStore
) -> None:
    store.down = True
    response = await api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] is False
    store.down = False
    assert (await api.client.get("/readyz")).status_code == 200


async def test_not_ready_once_draining_but_still_serving(api: Api) -> None:
    api.draining.set()
    response = await api.client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["not_draining"] is False
    assert (await api.client.get(URL)).status_code == 200


async def test_api_keys_are_off_by_default(api: Api) -> None:
    assert (await api.client.get(URL)).status_code == 200


async def test_api_keys_when_configured(make_api: MakeApi) -> None:
    keys = [SecretStr("k-one"), SecretStr("k-two")]
    async with make_api(api_keys=keys) as api:
        missing = await api.client.get(URL)
        wrong = await api.client.get(URL, headers={"X-API-Key": "k-three"})
        right = await api.client.get(URL, headers={"X-API-Key": "k-two"})
        health = await api.client.get("/readyz")
        schema = (await api.internal.get("/openapi.json")).json()
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.json()["error"]["code"] == "unauthorized"
    assert health.status_code == 200
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]


async def test_the_rate_limit_is_per_client_and_spares_health(make_api: MakeApi) -> None:
    keys = [SecretStr("k-one"), SecretStr("k-two")]
    async with make_api(rate_limit="3/minute", api_keys=keys) as api:
        one = {"X-API-Key": "k-one"}
        statuses = [(await api.client.get(URL, headers=one)).status_code for _ in range(4)]
        other = await api.client.get(URL, headers={"X-API-Key": "k-two"})
        probes = [(await api.client.get("/readyz")).status_code for _ in range(5)]
        limited = await api.client.get(URL, headers=one)
        counted = api.sample(
            "reco_api_http_requests_total",
            handler="/v1/users/{user_id}/recommendations",
            method="GET",
            status="4xx",
        )
    assert statuses == [200, 200, 200, 429]
    assert other.status_code == 200
    assert probes == [200] * 5
    assert limited.json()["error"]["code"] == "rate_limited"
    assert counted == 2


async def test_without_keys_a_made_up_key_header_buys_no_fresh_quota(make_api: MakeApi) -> None:
    """The limit used to key on X-API-Key even when nobody checked it: one header per request
    and the limit was gone. Without keys the client is its address."""
    async with make_api(rate_limit="3/minute") as api:
        statuses = [
            (await api.client.get(URL, headers={"X-API-Key": f"made-up-{n}"})).status_code
            for n in range(4)
        ]
    assert statuses == [200, 200, 200, 429]


async def test_a_query_with_too_many_fields_is_refused_before_parsing(api: Api) -> None:
    """max_exclude (100) + the three scalars + 8 unknown fields are parsed; more are refused."""
    allowed = "&".join(f"x{n}=1" for n in range(8))
    assert (await api.client.get(f"{URL}?{allowed}")).status_code == 200
    flood = "&".join(f"exclude=i{n}" for n in range(1_000))
    reply = await api.client.get(f"{URL}?{flood}")
    assert reply.status_code == 422
    assert "at most 111 query fields" in reply.text


async def test_metrics_cover_requests_and_fallbacks(api: Api) -> None:
    await api.client.get(URL)
    await api.client.get("/v1/users/newcomer/recommendations")
    text = (await api.internal.get("/metrics")).text
    assert 'reco_api_http_requests_total{handler="/v1/users/{user_id}/recommendations"' in text
    assert "reco_api_http_request_duration_seconds_bucket" in text
    assert "# TYPE reco_api_redis_latency_seconds histogram" in text
    assert 'reco_api_fallbacks_total{reason="no_list"} 1.0' in text
    assert 'handler="/healthz"' not in text


async def test_metrics_label_by_template_and_status_class_and_skip_made_up_paths(
    make_api: MakeApi, store: FakeStore
) -> None:
    async with make_api(raise_app_exceptions=False) as api:
        await api.client.post(URL)
        await api.client.get(f"/nowhere/{'x' * 8}")
        store.bug = RuntimeError("boom")
        await api.client.get(URL)
        text = (await api.internal.get("/metrics")).text
        not_allowed = api.sample(
            "reco_api_http_requests_total", handler=ROUTE, method="POST", status="4xx"
        )
        failed = api.sample(
            "reco_api_http_requests_total", handler=ROUTE, method="GET", status="5xx"
        )
    assert (not_allowed, failed) == (1, 1)
    assert "nowhere" not in text


async def test_per_request_metrics_can_be_switched_off(make_api: MakeApi) -> None:
    async with make_api(http_metrics=False) as api:
        await api.client.get("/v1/users/newcomer/recommendations")
        text = (await api.internal.get("/metrics")).text
    assert "reco_api_http_requests_total" not in text
    assert 'reco_api_fallbacks_total{reason="no_list"} 1.0' in text
