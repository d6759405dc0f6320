"""The Redis Cluster of `scripts/stack.sh cluster-up` as the tests see it: its URL, nodes, roles,
the primary of a key, failovers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from reco_common.pipelined_cluster import slot_of

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack.sh"
FIRST_PORT = int(os.environ.get("RECO_REDIS_CLUSTER_PORT", "7000"))
PORTS = list(range(FIRST_PORT, FIRST_PORT + 6))
URL = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in PORTS)
WAIT_S = 30.0


def cluster_up() -> None:
    """Start the cluster, or restart its nodes that are down, and wait until it serves."""
    subprocess.run([str(STACK), "cluster-up"], check=True, timeout=300)


def cluster_down() -> None:
    subprocess.run([str(STACK), "cluster-down"], check=True, timeout=120)


def cluster_runs() -> bool:
    """Some node of the cluster answers (it was started before, by someone else)."""
    try:
        return bool(nodes())
    except AssertionError:
        return False


@dataclass(frozen=True, slots=True)
class Node:
    port: int
    primary: bool
    slots: tuple[tuple[int, int], ...]  # served ranges (primaries only)
    replica_of: str | None  # the primary's node id (replicas only)
    node_id: str


def nodes() -> list[Node]:
    """Every node that is up and not failed, as ``CLUSTER NODES`` of one of them tells."""
    for port in PORTS:
        try:
            described = Redis(port=port, socket_timeout=2).execute_command("CLUSTER NODES")
        except (OSError, RedisConnectionError):
            continue
        return [
            _node(address, about)
            for address, about in described.items()
            if "fail" not in about["flags"] and "noaddr" not in about["flags"]
        ]
    raise AssertionError("no cluster node answers")


def _node(address: str, about: dict[str, Any]) -> Node:
    primary = "master" in about["flags"]
    return Node(
        port=int(address.rsplit(":", 1)[1]),
        primary=primary,
        slots=tuple((int(r[0]), int(r[-1])) for r in about["slots"]),
        replica_of=None if primary else about["master_id"],
        node_id=about["node_id"],
    )


def primary_of(key: str) -> Node:
    slot = slot_of(key)
    for node in nodes():
        if node.primary and any(start <= slot <= end for start, end in node.slots):
            return node
    raise AssertionError(f"no primary serves slot {slot}")


def replica_of(primary: Node) -> Node:
    return next(n for n in nodes() if n.replica_of == primary.node_id)


def node_pid(port: int) -> int:
    dir_ = Path(os.environ.get("RECO_REDIS_CLUSTER_DIR", _default_dir())) / str(port)
    return int((dir_ / "pid").read_text())


def _default_dir() -> str:
    stack = Path(os.environ.get("RECO_STACK_DIR", REPO / ".stack"))
    return str(stack / "redis-cluster")


def kill(node: Node) -> None:
    """SIGKILL the node's process: its replica takes over after the node timeout."""
    os.kill(node_pid(node.port), signal.SIGKILL)


async def until_primary(port: int) -> None:
    """Wait until the node on ``port`` is a primary that serves slots, as every node sees it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while loop.time() < deadline:
        if any(n.port == port and n.primary and n.slots for n in nodes()) and _state_ok():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"127.0.0.1:{port} did not become a primary within {WAIT_S:g} s")


def _state_ok() -> bool:
    for node in nodes():
        info = Redis(port=node.port, socket_timeout=2).execute_command("CLUSTER INFO")
        if info["cluster_state"] != "ok":
            return False
    return True
