"""The baseline: a bare Starlette endpoint doing the API's Redis read and building the same body.

No validation, no dependency injection, no middleware, no error handling: what is left of the
request path when everything but the work itself is stripped away. Served by the same uvicorn
configuration as the API (httptools, uvloop, no access log). Reads its Redis from the same
``RECO_REDIS_*`` settings. ``BENCH_GC_FREEZE=1`` freezes the startup heap as the API does.
"""

from __future__ import annotations

import gc
import os
import time

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reco_common.contracts import ActiveModel, decode, decode_recommendations
from reco_common.redis_store import connect
from reco_common.settings import RedisSettings

MODEL = "default"
ACTIVE_REFRESH_S = 1.0
settings = RedisSettings()
redis = connect(settings)
active: tuple[float, bytes | None] = (float("-inf"), None)  # when read, what was read


async def active_record() -> bytes | None:
    """The active record, read again once a second, as the API keeps it."""
    global active
    if time.monotonic() - active[0] >= ACTIVE_REFRESH_S:
        active = (time.monotonic(), await redis.get(settings.keys.active_model(MODEL)))
    return active[1]


async def recommendations(request: Request) -> Response:
    user_id = request.path_params["user_id"]
    n = int(request.query_params.get("n", "10"))
    raw = await redis.get(settings.keys.recommendations(MODEL, user_id))
    record = await active_record()
    if record is None:
        return Response(b"{}", 404, media_type="application/json")
    if raw is not None:  # the contract's codec, as the API decodes
        personal = decode_recommendations(raw)
        version, at, items, scores = (
            personal.model_version,
            personal.computed_at,
            personal.items,
            personal.scores,
        )
        source = "personalized"
    else:
        fallback = decode(ActiveModel, record)
        version, at, items, scores = (
            fallback.version,
            fallback.activated_at,
            fallback.popular_items,
            fallback.popular_scores,
        )
        source = "fallback"
    body = {
        "user_id": user_id,
        "model": MODEL,
        "model_version": version,
        "computed_at": at,
        "source": source,
        "items": [{"item_id": i, "score": s} for i, s in zip(items[:n], scores[:n], strict=False)],
    }
    return Response(orjson.dumps(body, option=orjson.OPT_UTC_Z), media_type="application/json")


app = Starlette(routes=[Route("/v1/users/{user_id}/recommendations", recommendations)])

if os.environ.get("BENCH_GC_FREEZE") == "1":
    # The same startup-heap freeze as reco_api.server, to show what the baseline gains from it.
    gc.collect()
    gc.freeze()
