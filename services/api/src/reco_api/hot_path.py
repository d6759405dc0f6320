"""The served route answered in front of the FastAPI stack: pure ASGI, same handlers, same shape.

``GET /v1/users/{user_id}/recommendations`` is every page view; everything else (probes,
``/metrics``, the docs, ``HEAD``, a trailing slash, any other method) goes to the FastAPI app
as before. Passing through Starlette's and FastAPI's layers (server-error, telemetry, body
limit, exception, async-exit-stack middleware, the router, ``request_response``), each a
coroutine and a ``send`` wrapper, cost about a quarter of the API's CPU per request once the
Redis read and the response had been made cheap (py-spy, docs/benchmarks.md).

What the layers did for this route is done here, with the app's own pieces:

- errors: the exception handlers the app registered (``reco_common.http_errors``, the rate
  limiter's 429) answer, looked up by the exception's type like Starlette does; an unexpected
  exception answers 500 in the shape and is re-raised for the server to log, as Starlette's
  ``ServerErrorMiddleware`` does;
- metrics: the request is counted and timed under the route's template, as
  :class:`reco_api.metrics.MeasureRequests` does for the other routes;
- the scope gets ``route`` and ``path_params`` like a routed request's.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from time import perf_counter

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

from reco_api.metrics import HttpMetrics

Endpoint = Callable[[Request], Awaitable[Response]]


class HotPath:
    """ASGI app: ``route``'s GET requests to ``endpoint``, everything else to ``app``."""

    def __init__(
        self,
        app: FastAPI,
        *,
        route: BaseRoute,
        path: str,
        endpoint: Endpoint,
        metrics: HttpMetrics | None,
    ) -> None:
        self._app = app
        self._route = route
        self._template = path
        # The template's {user_id} as Starlette's default convertor matches it: one segment.
        prefix, _, suffix = path.partition("{user_id}")
        self._pattern = re.compile(f"{re.escape(prefix)}([^/]+){re.escape(suffix)}")
        self._endpoint = endpoint
        self._metrics = metrics

    @property
    def app(self) -> FastAPI:
        """The app behind: its routes, schema and state (the internal port serves from them)."""
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            match = self._pattern.fullmatch(scope["path"])
        if match is None:
            await self._app(scope, receive, send)
            return
        started = perf_counter()
        scope["route"] = self._route
        scope["path_params"] = {"user_id": match[1]}
        request = Request(scope, receive)
        status = 500
        try:
            try:
                response = await self._endpoint(request)
            except Exception as exc:
                handled_as, response = await self._error_response(request, exc)
                status = response.status_code
                await response(scope, receive, send)
                if handled_as is Exception:
                    raise  # for the server to log, as Starlette's ServerErrorMiddleware does
                return
            status = response.status_code
            await response(scope, receive, send)
        finally:
            if self._metrics is not None:
                self._metrics.observe(self._template, "GET", status, perf_counter() - started)

    async def _error_response(self, request: Request, exc: Exception) -> tuple[type, Response]:
        """The response of the app's handler for ``exc`` (the nearest type in its MRO)."""
        handlers = self._app.exception_handlers
        cls = next((cls for cls in type(exc).__mro__ if cls in handlers), None)
        if cls is None:
            raise exc
        response = handlers[cls](request, exc)
        if inspect.isawaitable(response):
            response = await response
        if not isinstance(response, Response):
            raise TypeError(f"the handler of {cls.__name__} answered {response!r}") from exc
        return cls, response
