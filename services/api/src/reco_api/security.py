"""The guards: API keys (required outside dev, see the settings) and a per-client rate limit.

The key is checked in constant time against each configured key (FastAPI's ``APIKeyHeader``
describes it in the OpenAPI schema); the limit is slowapi over ``limits``. A client is its API
key when keys are configured (the key was checked before the limiter runs), else its address
(behind a proxy, see ``RECO_API_FORWARDED_ALLOW_IPS``): never a header nobody checked, which
would buy a fresh quota with every made-up value.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Security, params
from fastapi.security import APIKeyHeader
from pydantic import SecretStr
from slowapi import Limiter
from slowapi.util import get_remote_address

from reco_common.http_errors import HttpError

API_KEY_HEADER = "X-API-Key"

Endpoint = Callable[..., Awaitable[Any]]

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The configured client keys; a request must present one in ``X-API-Key``."""

    def __init__(self, keys: list[SecretStr]) -> None:
        self._digests = [_digest(key.get_secret_value()) for key in keys]

    def check(self, request: Request) -> None:
        presented = _digest(request.headers.get(API_KEY_HEADER) or "")
        # Compare against every key, each in constant time: no timing hint about which is close.
        matches = [hmac.compare_digest(presented, digest) for digest in self._digests]
        if not any(matches):
            raise HttpError(
                status=401,
                code="unauthorized",
                message=f"a valid {API_KEY_HEADER} header is required",
                headers={"WWW-Authenticate": API_KEY_HEADER},
            )

    @staticmethod
    def documented() -> list[params.Depends]:
        """The OpenAPI security scheme of the key (the check itself is :meth:`check`)."""
        return [Security(_api_key_header)]


def _by_checked_key(request: Request) -> str:
    return f"key:{_digest(request.headers.get(API_KEY_HEADER) or '').hex()}"


def _by_address(request: Request) -> str:
    return f"ip:{get_remote_address(request)}"


def rate_limited(endpoint: Endpoint, *, limit: str, keys_checked: bool) -> Endpoint:
    """``endpoint`` limited to ``limit`` (e.g. ``"100/second"``) per client, in process memory.

    ``keys_checked``: the API key was verified before the endpoint runs, so it names the client;
    otherwise the client's address does.

    slowapi's route decorator rather than its ASGI middleware: only the served route is
    limited (never the probes or ``/metrics``), and no middleware runs on every request. The
    decorator needs the endpoint to take ``request: Request``.
    """
    key_func = _by_checked_key if keys_checked else _by_address
    limiter = Limiter(key_func=key_func, key_style="endpoint", storage_uri="memory://")
    limited: Endpoint = limiter.limit(limit)(endpoint)
    return limited
