"""Real processes for the API integration tests: a private redis-server and the API itself.

The shared dev-stack Redis is never stopped: each test that needs Redis gets its own
``redis-server`` on a free loopback port, which it may stop and restart at will.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

from reco_common.contracts import ActiveModel, RecommendationList
from reco_common.redis_store import activate_model, connect, replace_lists
from reco_common.settings import RedisSettings

MODEL = "default"
# Interpreter and imports: ~40 s measured on the loaded 2-core machine (load average 23).
START_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(
    ready: Callable[[], bool], *, what: str, timeout_s: float = START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not up within {timeout_s} s")


class RedisServer:
    """One redis-server process; ``kill`` and ``start`` again keep the port and the data."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir), "--dbfilename", "dump.rdb"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_until(self._answers, what="redis-server")

    def kill(self) -> None:
        """Snapshot the data (so a restart finds it), then die abruptly like a crashed server."""
        assert self.proc is not None
        self.client().save()
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False


async def seed(server: RedisServer | str, prefix: str, *, users: int, popular: list[str]) -> None:
    """Through reco_common.redis_store, as the worker does: activate the model, then write
    ``users`` lists (u0, u1, ...) of 20 items each (in ``server``, or the Redis of that URL)."""
    now = datetime.now(UTC)
    url = server if isinstance(server, str) else server.url
    settings = RedisSettings(url=url, key_prefix=prefix)
    active = ActiveModel(
        model_name=MODEL,
        version="v1",
        artifact_uri=f"file:///models/{MODEL}/v1",
        activated_at=now,
        popular_items=popular,
        popular_scores=[1.0] * len(popular),
    )
    lists = {
        f"u{user}": RecommendationList(
            model_version="v1",
            computed_at=now,
            items=[f"i{user}-{rank}" for rank in range(20)],
            scores=[0.5] * 20,
        )
        for user in range(users)
    }
    client = connect(settings)
    try:
        await activate_model(client, settings.keys, active)
        await replace_lists(client, settings.keys, MODEL, lists)
    finally:
        await client.aclose()


class ApiProcess:
    """``python -m reco_api`` as a real process, as a pod would run it."""

    def __init__(self, *, redis_url: str, key_prefix: str, log: Path, **api: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # The internal port: /metrics, /docs, /openapi.json (the public one serves the API).
        self.ops_port = free_port()
        self.ops_url = f"http://127.0.0.1:{self.ops_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
        env |= {
            "RECO_REDIS_URL": redis_url,
            "RECO_REDIS_KEY_PREFIX": key_prefix,
            "RECO_API_HOST": "127.0.0.1",
            "RECO_API_PORT": str(self.port),
            "RECO_API_OPS_HOST": "127.0.0.1",
            "RECO_API_OPS_PORT": str(self.ops_port),
        }
        env |= {f"RECO_API_{name.upper()}": value for name, value in api.items()}
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reco_api"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        _wait_until(self._live, what="reco-api")

    def _live(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"reco-api exited {self.proc.returncode}: {self.log.read_text()}")
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


StartApi = Callable[..., ApiProcess]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's result: the status and error code, or the transport error."""

    status: int | None
    code: str | None = None
    error: str | None = None


class Load:
    """``clients`` concurrent clients, each on its own keep-alive connection, asking for random
    users (some without a list) until ``stop`` is set or ``max_per_client`` is reached."""

    def __init__(
        self,
        base_url: str,
        *,
        clients: int,
        users: int,
        pause_s: float = 0.0,
        max_per_client: int = 20_000,
    ) -> None:
        self.base_url = base_url
        self.clients = clients
        self.users = users
        self.pause_s = pause_s
        self.max_per_client = max_per_client
        self.stop = asyncio.Event()
        self.outcomes: list[Outcome] = []

    async def run(self) -> None:
        await asyncio.gather(*(self._client(seed) for seed in range(self.clients)))

    async def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5) as client:
            for _ in range(self.max_per_client):
                if self.stop.is_set():
                    return
                user = f"u{rng.randrange(self.users)}"
                self.outcomes.append(await _request(client, f"/v1/users/{user}/recommendations"))
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)

    def count(self, status: int, *, since: int = 0) -> int:
        return sum(1 for outcome in self.outcomes[since:] if outcome.status == status)

    async def wait_for(self, done: Callable[[], bool], *, what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s} s ({len(self.outcomes)} sent)")
            await asyncio.sleep(0.02)


async def _request(client: httpx.AsyncClient, path: str) -> Outcome:
    try:
        response = await client.get(path)
    except httpx.HTTPError as exc:
        return Outcome(None, error=repr(exc))
    code = response.json()["error"]["code"] if response.status_code >= 400 else None
    return Outcome(response.status_code, code)


async def stop_when_not_ready(base_url: str, stop: asyncio.Event, *, timeout_s: float) -> None:
    """What a load balancer does: poll ``/readyz`` and set ``stop`` once it is not 200."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            try:
                ready = (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                ready = False
            if not ready:
                stop.set()
                return
            await asyncio.sleep(0.02)
    raise TimeoutError(f"/readyz still 200 after {timeout_s} s")
