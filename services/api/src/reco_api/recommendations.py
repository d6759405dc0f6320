"""``GET /v1/users/{user_id}/recommendations``: a user's list, or the active model's popular list.

The stored values are JSON written by ``reco_common.contracts.encode`` (a
``RecommendationList`` per user, an ``ActiveModel`` per model); they are decoded here with
orjson alone, and the response is built as a dict and encoded with orjson, skipping pydantic on
the hot path. The pydantic models below exist for the OpenAPI schema.

No ``from __future__ import annotations`` here: the route's parameter annotations use the
configured bounds (closure variables), which FastAPI must see evaluated, not as strings.
"""

import enum
import logging
from collections.abc import Iterable
from datetime import datetime
from itertools import islice
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field, create_model
from starlette.responses import Response

from reco_api.errors import ERROR_RESPONSES, JSON, ApiError
from reco_api.metrics import ApiMetrics
from reco_api.security import Endpoint, rate_limited
from reco_api.settings import ApiSettings
from reco_api.store import Store, StoreUnavailable
from reco_common.contracts import Identifier, ModelName

logger = logging.getLogger(__name__)


def _unavailable() -> ApiError:
    # A new instance per raise: re-raising one instance would chain its tracebacks forever.
    return ApiError(
        status=503,
        code="store_unavailable",
        message="the recommendation store is unreachable; retry shortly",
        headers={"Retry-After": "1"},
    )


class Source(enum.StrEnum):
    PERSONALIZED = "personalized"  # the user's own list, computed by the worker
    FALLBACK = "fallback"  # the active model's popular list: the user has no list yet
    STATIC = "static"  # the configured static list: Redis is unreachable


class Item(BaseModel):
    item_id: str
    score: float | None


class Recommendations(BaseModel):
    user_id: str
    model: str
    model_version: str | None
    computed_at: datetime | None
    source: Source
    items: list[Item]


class _Corrupt(ValueError):
    """A stored value that does not have the contract's shape."""


def _fields(raw: bytes | str, *names: str) -> list[Any]:
    try:
        value = orjson.loads(raw)
        return [value[name] for name in names]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise _Corrupt(repr(exc)) from None


def select(
    items: list[str], scores: list[Any], *, exclude: frozenset[str], offset: int, n: int
) -> list[dict[str, Any]]:
    """The ``n`` items after ``offset``, once the excluded ones are taken out."""
    pairs: Iterable[tuple[str, Any]] = zip(items, scores, strict=False)
    if exclude:
        pairs = ((item, score) for item, score in pairs if item not in exclude)
    return [{"item_id": item, "score": score} for item, score in islice(pairs, offset, offset + n)]


class RecommendationService:
    """Turns the two raw values of one ``MGET`` into the response body."""

    def __init__(self, *, store: Store, settings: ApiSettings, metrics: ApiMetrics) -> None:
        self._store = store
        self._metrics = metrics
        self._static = settings.static_fallback_items

    async def recommend(
        self, *, model: str, user_id: str, exclude: frozenset[str], offset: int, n: int
    ) -> dict[str, Any]:
        try:
            view = await self._store.read(model, user_id)
        except StoreUnavailable:
            return self._static_list(model, user_id, exclude=exclude, offset=offset, n=n)
        if view.active is None:
            raise ApiError(status=404, code="model_not_found", message=f"no active model {model!r}")
        source = Source.PERSONALIZED
        stored = self._personal(model, user_id, view.recommendations)
        if stored is None:
            source = Source.FALLBACK
            stored = self._popular(model, view.active)
            self._metrics.fallbacks.labels("no_list").inc()
        version, computed_at, items, scores = stored
        return {
            "user_id": user_id,
            "model": model,
            "model_version": version,
            "computed_at": computed_at,
            "source": source,
            "items": select(items, scores, exclude=exclude, offset=offset, n=n),
        }

    def _personal(self, model: str, user_id: str, raw: bytes | str | None) -> list[Any] | None:
        if raw is None:
            return None
        try:
            return _fields(raw, "model_version", "computed_at", "items", "scores")
        except _Corrupt as exc:
            self._corrupt("recommendations", model, user_id, exc)
            return None

    def _popular(self, model: str, active: bytes | str) -> list[Any]:
        try:
            return _fields(active, "version", "activated_at", "popular_items", "popular_scores")
        except _Corrupt as exc:
            self._corrupt("active_model", model, None, exc)
            raise ApiError(
                status=500, code="corrupt_model_record", message="the model record is unreadable"
            ) from None

    def _static_list(
        self, model: str, user_id: str, *, exclude: frozenset[str], offset: int, n: int
    ) -> dict[str, Any]:
        if not self._static:
            raise _unavailable()
        self._metrics.fallbacks.labels("store_unavailable").inc()
        scores = [None] * len(self._static)
        return {
            "user_id": user_id,
            "model": model,
            "model_version": None,
            "computed_at": None,
            "source": Source.STATIC,
            "items": select(self._static, scores, exclude=exclude, offset=offset, n=n),
        }

    def _corrupt(self, kind: str, model: str, user_id: str | None, exc: Exception) -> None:
        self._metrics.corrupt_values.labels(kind).inc()
        logger.error("unreadable %s value (model %s, user %s): %s", kind, model, user_id, exc)


async def _service(request: Request) -> RecommendationService:
    service: RecommendationService = request.app.state.recommendations
    return service


ServiceDep = Annotated[RecommendationService, Depends(_service)]


class RecommendationQuery(BaseModel):
    """The query parameters, validated in one pass (cheaper than one FastAPI param each)."""

    n: int
    offset: int
    exclude: list[Identifier]
    model: ModelName


def bounded_query(settings: ApiSettings) -> type[RecommendationQuery]:
    """:class:`RecommendationQuery` with the configured bounds and defaults (also in OpenAPI)."""
    return create_model(
        "RecommendationQuery",
        __base__=RecommendationQuery,
        n=(int, Field(settings.default_n, ge=1, le=settings.max_n, description="How many items")),
        offset=(int, Field(0, ge=0, le=settings.max_offset, description="Items to skip")),
        exclude=(
            list[Identifier],
            Field([], max_length=settings.max_exclude, description="Item ids to leave out"),
        ),
        model=(ModelName, Field(settings.default_model, description="The model's name")),
    )


def recommendations_router(settings: ApiSettings) -> APIRouter:
    """The route, with the configured bounds in its validation and in the OpenAPI schema."""
    router = APIRouter(prefix="/v1", tags=["recommendations"])
    Bounded = bounded_query(settings)

    async def get_recommendations(
        request: Request,
        service: ServiceDep,
        user_id: Annotated[Identifier, Path(description="The user's id")],
        query: Annotated[Bounded, Query()],  # type: ignore[valid-type]
    ) -> Response:
        """The user's own list (``source: personalized``) or, when the user has none yet, the
        active model's popular list (``source: fallback``). 404 only when the model is not
        active; 503 when Redis is unreachable (or the configured static list, ``source:
        static``)."""
        params: RecommendationQuery = query
        body = await service.recommend(
            model=params.model,
            user_id=user_id,
            exclude=frozenset(params.exclude),
            offset=params.offset,
            n=params.n,
        )
        return Response(orjson.dumps(body), media_type=JSON)

    endpoint: Endpoint = get_recommendations
    if settings.rate_limit:
        endpoint = rate_limited(get_recommendations, limit=settings.rate_limit)
    router.add_api_route(
        "/users/{user_id}/recommendations",
        endpoint,
        methods=["GET"],
        response_model=Recommendations,
        responses=ERROR_RESPONSES,
        summary="A user's recommendations",
    )
    return router
