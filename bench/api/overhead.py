"""Where the API's time goes: CPU microseconds per request inside the ASGI app, layer by layer.

    uv run python bench/api/overhead.py [--requests 3000] [--rounds 3]

No server, no socket, no Redis: each app is called directly with an ASGI scope and reads an
in-memory store, and the process CPU time (not wall time, so other processes on the machine
matter less) is divided by the number of requests. Complements bench/api/run.py, whose figures
include uvicorn, the socket and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from reco_api.app import create_app
from reco_api.metrics import ApiMetrics
from reco_api.recommendations import RecommendationService
from reco_api.settings import ApiSettings
from reco_common.contracts import ActiveModel, RecommendationList, encode, encode_recommendations

MODEL = "default"
USERS = 100


class MemoryStore:
    """The API's ``Store`` boundary over a dict: what Redis would return, without Redis."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        items = [f"i{rank}" for rank in range(50)]
        self.active = encode(
            ActiveModel(
                model_name=MODEL,
                version="v1",
                artifact_uri="file:///bench",
                activated_at=now,
                popular_items=items,
                popular_scores=[1.0] * 50,
            )
        )
        rec = RecommendationList(
            model_version="v1", computed_at=now, items=items, scores=[0.5] * 50
        )
        self.lists = {f"u{user}": encode_recommendations(rec) for user in range(USERS)}

    async def read_list(self, model_name: str, user_id: str) -> bytes | None:
        return self.lists.get(user_id)

    async def read_active(self, model_name: str) -> bytes | None:
        return self.active

    async def ping(self) -> bool:
        return True


def variants(store: MemoryStore) -> dict[str, ASGIApp]:
    registry = CollectorRegistry()
    metrics = ApiMetrics.create(registry)
    service = RecommendationService(store=store, settings=ApiSettings(), metrics=metrics)

    async def bare(request: Request) -> Response:
        body = await service.recommend(
            model=MODEL, user_id=request.path_params["user_id"], exclude=frozenset(), offset=0, n=10
        )
        return Response(body, media_type="application/json")

    minimal = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})

    @minimal.get("/v1/users/{user_id}/recommendations")
    async def fastapi_minimal(user_id: str) -> Response:
        body = await service.recommend(
            model=MODEL, user_id=user_id, exclude=frozenset(), offset=0, n=10
        )
        return Response(body, media_type="application/json")

    def ours(**settings: Any) -> ASGIApp:
        registry = CollectorRegistry()
        return create_app(
            settings=ApiSettings(**settings),
            store=store,
            draining=asyncio.Event(),
            metrics=ApiMetrics.create(registry),
            registry=registry,
        )

    return {
        "bare Starlette route, same work": Starlette(
            routes=[Route("/v1/users/{user_id}/recommendations", bare)]
        ),
        "FastAPI route, one path parameter": minimal,
        "reco_api, no HTTP metrics": ours(http_metrics=False),
        "reco_api (as deployed)": ours(),
    }


async def cpu_us_per_request(app: ASGIApp, requests: int) -> float:
    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    started = time.process_time()
    for i in range(requests):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/v1/users/u{i % (USERS + 10)}/recommendations",
            "raw_path": b"",
            "query_string": b"n=10",
            "root_path": "",
            "headers": [(b"host", b"bench")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 8080),
        }
        await app(scope, receive, send)
    return (time.process_time() - started) / requests * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    apps = variants(MemoryStore())
    results: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):
        for name, app in apps.items():
            await cpu_us_per_request(app, 300)
            results[name].append(await cpu_us_per_request(app, args.requests))
    print(f"CPU per request inside the app (median of {args.rounds} rounds):")
    print()
    print("| app | CPU µs/request |")
    print("|---|---:|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
