"""API benchmark: requests/s and p50/p99 at 70 % load with wrk, side by side with a bare endpoint.

    uv run python bench/api/run.py [--rounds 3] [--duration 8] [--connections 32]

Four servers, each a real process, one process each, reading the same private ``redis-server``:

- ``bare``: bench/api/bare.py under uvicorn (httptools, uvloop, no access log): a Starlette route
  doing the same ``MGET`` with redis-py, decoding the stored list with the contract's codec and
  encoding the response with orjson, nothing else. It reads the lists as JSON (format 1, under
  their own key prefix): the idiomatic layout, not the API's sliceable one;
- ``bare on granian``: the same app under granian's CLI with its fastest settings for one
  process (``asginl``, one worker, one runtime thread in single-threaded mode, uvloop);
- ``api``: ``python -m reco_api`` as deployed (granian embedded; validation, error handling,
  HTTP metrics, the pipelined Redis connection, the lists in format 2);
- ``api on uvicorn``: the same with ``RECO_API_SERVER=uvicorn``.

Only one server runs at a time, and the rounds interleave them, so background load on the
machine hits all of them alike. Maximum throughput: closed-loop wrk with ``--connections``.
Then p50/p99 at 70 % of each one's own maximum (the API's, the bare endpoint's): each wrk
connection is a client that waits for its response, then thinks for an exponential time
(Poisson-like arrivals), calibrated to the target rate, interleaved. Not an open-loop generator: on
these 2 cores vegeta (open loop) took 35-50 % of a core itself at 2,000 requests/s, which
turns "70 % of the maximum" into overload (docs/benchmarks.md). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from redis.exceptions import ConnectionError as RedisConnectionError

from reco_common.contracts import ActiveModel, RecommendationList, encode
from reco_common.redis_store import activate_model, connect, replace_lists
from reco_common.settings import RedisSettings

BENCH_DIR = Path(__file__).resolve().parent
MODEL = "default"
USERS = 10_000  # users with a list; ~10 % of the requests ask for users without one
ITEMS = 50
KEY_PREFIX = "bench"
JSON_KEY_PREFIX = "benchjson"  # the same lists as JSON (format 1), for the bare endpoint

LUA = """
math.randomseed(os.time())
local users = %(users)d
local think_ms = %(think_ms)f
request = function()
  local user = math.random(0, users - 1)
  return wrk.format("GET", "/v1/users/u" .. user .. "/recommendations?n=10")
end
if think_ms > 0 then
  delay = function()
    return math.floor(-think_ms * math.log(1 - math.random()) + 0.5)
  end
end
"""


@dataclass(frozen=True, slots=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        print("wrk not found: installing it from Debian (apt-get install wrk)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    assert found is not None, "wrk is required (apt-get install wrk)"
    return found


def wait_until(url: str, *, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not up within {timeout_s} s")


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is required (scripts/stack.sh install)"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        asyncio.run(seed(RedisSettings(url=url, key_prefix=KEY_PREFIX)))
        asyncio.run(seed(RedisSettings(url=url, key_prefix=JSON_KEY_PREFIX), as_json=True))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def seed(settings: RedisSettings, *, as_json: bool = False) -> None:
    deadline = time.monotonic() + 30
    client = connect(settings)
    while True:
        try:
            await client.ping()
            break
        except RedisConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    now = datetime.now(UTC)
    popular = [f"p{rank}" for rank in range(ITEMS)]
    await activate_model(
        client,
        settings.keys,
        ActiveModel(
            model_name=MODEL,
            version="v1",
            artifact_uri="file:///bench",
            activated_at=now,
            popular_items=popular,
            popular_scores=[float(ITEMS - rank) for rank in range(ITEMS)],
        ),
    )
    scores = [1.0 - rank / ITEMS for rank in range(ITEMS)]
    for start in range(0, USERS, 1000):
        lists = {
            f"u{user}": RecommendationList(
                model_version="v1",
                computed_at=now,
                items=[f"i{(user * 7 + rank) % 5000}" for rank in range(ITEMS)],
                scores=scores,
            )
            for user in range(start, start + 1000)
        }
        if as_json:
            await client.mset(
                {settings.keys.recommendations(MODEL, u): encode(v) for u, v in lists.items()}
            )
        else:
            await replace_lists(client, settings.keys, MODEL, lists)
    await client.aclose()


def commands(port: int) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """Per variant: the command, its extra environment, and the URL that says it is up."""
    bin_dir = Path(sys.executable).parent
    uvicorn = [str(bin_dir / "uvicorn"), "bare:app", "--app-dir", str(BENCH_DIR)]
    uvicorn += ["--host", "127.0.0.1", "--port", str(port), "--http", "httptools"]
    uvicorn += ["--loop", "uvloop", "--no-access-log", "--log-level", "warning"]
    uvicorn += ["--no-server-header"]
    granian = [str(bin_dir / "granian"), "--interface", "asginl", "--host", "127.0.0.1"]
    granian += ["--port", str(port), "--workers", "1", "--runtime-threads", "1"]
    granian += ["--runtime-mode", "st", "--loop", "uvloop", "--no-ws", "--http", "1"]
    granian += ["--log-level", "warning", "--working-dir", str(BENCH_DIR), "bare:app"]
    bare_env = {"RECO_REDIS_KEY_PREFIX": JSON_KEY_PREFIX}
    api_env = {
        "RECO_API_HOST": "127.0.0.1",
        "RECO_API_PORT": str(port),
        "RECO_API_OPS_PORT": "0",  # the internal port (/metrics, /docs): any free one
        "RECO_API_DRAIN_S": "0",
        "RECO_API_SHUTDOWN_TIMEOUT_S": "3",
        "RECO_LOG_LEVEL": "WARNING",
    }
    base = f"http://127.0.0.1:{port}"
    bare_up = f"{base}/v1/users/u1/recommendations"
    api = [sys.executable, "-m", "reco_api"]
    return {
        "bare": (uvicorn, bare_env, bare_up),
        "bare on granian": (granian, bare_env, bare_up),
        "api": (api, api_env, f"{base}/readyz"),
        "api on uvicorn": (api, api_env | {"RECO_API_SERVER": "uvicorn"}, f"{base}/readyz"),
    }


@contextmanager
def server(variant: str, *, redis_url: str) -> Iterator[str]:
    port = free_port()
    command, extra_env, ready_url = commands(port)[variant]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env |= {"RECO_REDIS_URL": redis_url, "RECO_REDIS_KEY_PREFIX": KEY_PREFIX} | extra_env
    proc = subprocess.Popen(command, env=env)
    try:
        wait_until(ready_url, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    binary: str, url: str, *, duration_s: int, connections: int, think_ms: float, tmp: Path
) -> Run:
    script = tmp / "bench.lua"
    script.write_text(LUA % {"users": int(USERS * 1.1), "think_ms": think_ms})
    args = [binary, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script)]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    latency = {pct: float(value) * _UNIT_MS[unit] for pct, value, unit in _LATENCY.findall(out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return Run(rps=rps, p50_ms=latency["50"], p99_ms=latency["99"], errors=errors)


def at_rate(
    binary: str, url: str, *, rate: float, duration_s: int, connections: int, tmp: Path
) -> Run:
    """wrk with think time calibrated so that ``connections`` send ``rate`` requests/s.

    Each connection waits for its response, then thinks; the think time is corrected from
    short runs (up to four) until they achieve the rate within 5 %.
    """
    think_ms = connections * 1000.0 / rate - 1.0
    for _ in range(4):
        calibration = wrk(
            binary, url, duration_s=3, connections=connections, think_ms=think_ms, tmp=tmp
        )
        if abs(calibration.rps - rate) <= 0.05 * rate:
            break
        # per connection: interval = response time + think time; keep the response time
        interval_ms = connections * 1000.0 / calibration.rps
        think_ms = max(think_ms + connections * 1000.0 / rate - interval_ms, 0.0)
    return wrk(
        binary, url, duration_s=duration_s, connections=connections, think_ms=think_ms, tmp=tmp
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    args = parser.parse_args()
    binary = ensure_wrk()
    variants = list(commands(0))
    print(f"load average at the start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory() as tmpdir, redis_server(Path(tmpdir)) as redis_url:
        tmp = Path(tmpdir)
        peaks: dict[str, list[Run]] = {variant: [] for variant in variants}
        for round_ in range(args.rounds):
            for variant in variants:
                with server(variant, redis_url=redis_url) as url:
                    for duration_s in (2, args.duration):  # a warm-up, then the measure
                        run = wrk(
                            binary,
                            url,
                            duration_s=duration_s,
                            connections=args.connections,
                            think_ms=0,
                            tmp=tmp,
                        )
                peaks[variant].append(run)
                print(f"round {round_ + 1} {variant}: {run}", flush=True)
        best = {v: statistics.median(r.rps for r in runs) for v, runs in peaks.items()}
        targets = {variant: 0.7 * best[variant] for variant in ("api", "bare")}
        paced: dict[str, list[Run]] = {variant: [] for variant in targets}
        for round_ in range(args.rounds):
            for variant in paced:
                with server(variant, redis_url=redis_url) as url:
                    wrk(
                        binary, url, duration_s=2, connections=args.connections, think_ms=0, tmp=tmp
                    )
                    run = at_rate(
                        binary,
                        url,
                        rate=targets[variant],
                        duration_s=args.duration,
                        connections=args.connections,
                        tmp=tmp,
                    )
                paced[variant].append(run)
                rate = targets[variant]
                print(f"round {round_ + 1} at {rate:.0f}/s {variant}: {run}", flush=True)
    report(peaks, best, targets, paced, args)
    print(f"\nload average at the end: {os.getloadavg()}")


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table under its title, the first column left-aligned, the others right."""
    print()
    print(title)
    print()
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def report(
    peaks: dict[str, list[Run]],
    best: dict[str, float],
    targets: dict[str, float],
    paced: dict[str, list[Run]],
    args: argparse.Namespace,
) -> None:
    def median(runs: list[Run], field: str) -> str:
        return f"{statistics.median(getattr(r, field) for r in runs):.2f}"

    def errors(runs: list[Run]) -> str:
        return str(sum(r.errors for r in runs))

    table(
        f"Maximum throughput (wrk -t1 -c{args.connections} -d{args.duration}s, median of "
        f"{args.rounds} interleaved rounds):",
        ["server", "requests/s", "vs bare", "vs bare on granian", "p50 ms", "p99 ms", "errors"],
        [
            [
                v,
                f"{best[v]:.0f}",
                f"{best[v] / best['bare']:.2f}",
                f"{best[v] / best['bare on granian']:.2f}",
                median(runs, "p50_ms"),
                median(runs, "p99_ms"),
                errors(runs),
            ]
            for v, runs in peaks.items()
        ],
    )
    table(
        f"At 70 % of each one's maximum ({args.connections} wrk connections with exponential "
        f"think time, {args.duration} s, median of {args.rounds} interleaved rounds):",
        ["server", "offered requests/s", "achieved", "p50 ms", "p99 ms", "worst p99 ms", "errors"],
        [
            [
                v,
                f"{targets[v]:.0f}",
                f"{statistics.median(r.rps for r in runs):.0f}",
                median(runs, "p50_ms"),
                median(runs, "p99_ms"),
                f"{max(r.p99_ms for r in runs):.2f}",
                errors(runs),
            ]
            for v, runs in paced.items()
        ],
    )


if __name__ == "__main__":
    main()
