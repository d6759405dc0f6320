"""The recommendations route: personalized, fallback, paging, exclusion, 404, 503, static list."""

from __future__ import annotations

from api_fakes import MODEL, Api, FakeStore, MakeApi, a_list, an_active_model

from reco_api.store import StoreUnavailable

URL = "/v1/users/{user}/recommendations"


def item_ids(body: dict[str, object]) -> list[str]:
    return [item["item_id"] for item in body["items"]]  # type: ignore[attr-defined]


async def test_a_user_with_a_list_gets_it_with_scores_version_and_time(api: Api) -> None:
    response = await api.client.get(URL.format(user="u1"), params={"n": 3})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "user_id": "u1",
        "model": MODEL,
        "model_version": "v2",
        "computed_at": "2026-11-23T08:00:00Z",
        "source": "personalized",
        "items": [
            {"item_id": "i1", "score": 5.0},
            {"item_id": "i2", "score": 4.0},
            {"item_id": "i3", "score": 3.0},
        ],
    }
    assert api.sample("reco_api_fallbacks_total", reason="no_list") == 0


async def test_a_user_without_a_list_gets_the_popular_fallback(api: Api) -> None:
    body = (await api.client.get(URL.format(user="newcomer"))).json()
    assert body["source"] == "fallback"
    assert body["model_version"] == "v2"
    assert item_ids(body) == ["p1", "p2", "p3", "p4"]
    assert api.sample("reco_api_fallbacks_total", reason="no_list") == 1


async def test_exclude_then_offset_then_n(api: Api) -> None:
    params = {"exclude": ["i2", "i4", "unknown"], "offset": 1, "n": 2}
    body = (await api.client.get(URL.format(user="u1"), params=params)).json()
    assert item_ids(body) == ["i3", "i5"]


async def test_paging_past_the_end_is_an_empty_list_not_an_error(api: Api) -> None:
    response = await api.client.get(URL.format(user="u1"), params={"offset": 10})
    assert response.status_code == 200
    assert response.json()["items"] == []


async def test_another_model_is_chosen_by_name(api: Api, store: FakeStore) -> None:
    store.active["other"] = store.active[MODEL]
    store.lists[("other", "u1")] = a_list(["o1"], version="v9")
    body = (await api.client.get(URL.format(user="u1"), params={"model": "other"})).json()
    assert (body["model"], body["model_version"], item_ids(body)) == ("other", "v9", ["o1"])


async def test_the_default_model_is_configurable(make_api: MakeApi, store: FakeStore) -> None:
    store.active["shop"] = store.active[MODEL]
    async with make_api(default_model="shop") as api:
        body = (await api.client.get(URL.format(user="u1"))).json()
    assert (body["model"], body["source"]) == ("shop", "fallback")


async def test_404_only_when_the_model_is_not_active(api: Api, store: FakeStore) -> None:
    response = await api.client.get(URL.format(user="u1") + "?model=unknown")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_the_default_model_without_its_record_is_unavailable_not_unknown(
    api: Api, store: FakeStore
) -> None:
    """A process started after Redis lost the record never saw it: the model it serves is
    still known to exist, and the controller writes the record again within seconds."""
    del store.active[MODEL]
    response = await api.client.get(URL.format(user="u1"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "model_unavailable"
    assert api.sample("reco_api_active_record_missing_total") == 1


async def test_a_lost_active_record_is_served_from_the_last_copy_and_reported(
    api: Api, store: FakeStore
) -> None:
    store.lists[(MODEL, "u1")] = a_list(["a", "b"])
    assert (await api.client.get(URL.format(user="u1"))).status_code == 200
    del store.active[MODEL]  # Redis lost the record (a flush, a restart without data)

    personal = (await api.client.get(URL.format(user="u1"))).json()
    fallback = (await api.client.get(URL.format(user="u2"))).json()
    assert personal["source"] == "personalized"
    assert (fallback["source"], fallback["model_version"]) == ("fallback", "v2")
    assert api.sample("reco_api_active_record_missing_total") == 2
    ready = (await api.client.get("/readyz")).json()
    assert (ready["ready"], ready["checks"]["active_records"]) == (True, False)

    store.active[MODEL] = an_active_model(["p9"], version="v3")  # a worker wrote it again
    fallback = (await api.client.get(URL.format(user="u2"))).json()
    assert (fallback["model_version"], item_ids(fallback)) == ("v3", ["p9"])
    assert (await api.client.get("/readyz")).json()["checks"]["active_records"] is True


async def test_an_unreadable_list_falls_back_and_is_counted(api: Api, store: FakeStore) -> None:
    store.lists[(MODEL, "u1")] = b'{"items": ["half'
    body = (await api.client.get(URL.format(user="u1"))).json()
    assert body["source"] == "fallback"
    assert api.sample("reco_api_corrupt_values_total", kind="recommendations") == 1


async def test_an_unreadable_model_record_is_a_500_in_the_error_shape(
    api: Api, store: FakeStore
) -> None:
    store.active[MODEL] = b"[]"
    response = await api.client.get(URL.format(user="newcomer"))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "corrupt_model_record"
    assert api.sample("reco_api_corrupt_values_total", kind="active_model") == 1


async def test_redis_down_is_a_503_with_a_clear_body(api: Api, store: FakeStore) -> None:
    store.down = True
    response = await api.client.get(URL.format(user="u1"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == {
        "status": 503,
        "code": "store_unavailable",
        "message": "the recommendation store is unreachable; retry shortly",
        "details": [],
    }


async def test_redis_down_serves_the_static_list_when_configured(
    make_api: MakeApi, store: FakeStore
) -> None:
    store.down = True
    async with make_api(static_fallback_items=["s1", "s2", "s3"]) as api:
        response = await api.client.get(URL.format(user="u1"), params={"n": 2})
        assert api.sample("reco_api_fallbacks_total", reason="store_unavailable") == 1
    assert response.status_code == 200
    body = response.json()
    assert (body["source"], body["model_version"], body["computed_at"]) == ("static", None, None)
    assert body["items"] == [{"item_id": "s1", "score": None}, {"item_id": "s2", "score": None}]


async def test_a_list_stored_before_format_2_is_served_alike(api: Api, store: FakeStore) -> None:
    query = {"n": 2, "offset": 1, "exclude": ["i2"]}
    current = (await api.client.get(URL.format(user="u1"), params=query)).json()
    store.lists[(MODEL, "u1")] = a_list(["i1", "i2", "i3", "i4", "i5"], legacy=True)
    legacy = (await api.client.get(URL.format(user="u1"), params=query)).json()
    assert item_ids(legacy) == ["i3", "i4"]
    assert legacy == current


async def test_the_active_record_is_kept_in_process_between_refreshes(
    make_api: MakeApi, store: FakeStore
) -> None:
    """One read per request (the user's list) while the copy is fresh; a new activation shows
    once the copy is older than ``active_refresh_s``."""
    async with make_api(active_refresh_s=3600) as api:
        for user in ("u1", "u2", "u3"):
            assert (await api.client.get(URL.format(user=user))).status_code == 200
        store.active[MODEL] = an_active_model(["p9"], version="v3")
        fallback = (await api.client.get(URL.format(user="u2"))).json()
    assert (fallback["model_version"], store.active_reads, store.reads) == ("v2", 1, 5)
    async with make_api(active_refresh_s=0) as api:
        fallback = (await api.client.get(URL.format(user="u2"))).json()
    assert fallback["model_version"] == "v3"


async def test_an_unreadable_record_keeps_serving_the_copy(
    make_api: MakeApi, store: FakeStore
) -> None:
    """The record's node is down while the user's list is readable (a cluster failover)."""
    async with make_api() as api:
        assert (await api.client.get(URL.format(user="u2"))).status_code == 200
        reads = store.read_active

        async def down(model_name: str) -> bytes | None:
            raise StoreUnavailable("the record's node is down")

        store.read_active = down  # type: ignore[method-assign]
        body = (await api.client.get(URL.format(user="u2"))).json()
        store.read_active = reads  # type: ignore[method-assign]
    assert (body["source"], body["model_version"]) == ("fallback", "v2")
