"""The pipelined Redis client on a Redis Cluster: each command to the node of its key's slot.

One :class:`reco_common.pipelined.PipelinedRedis` (one connection, one write per loop turn) per
primary; a command goes to the primary serving its key's slot (:func:`slot_of`, the key's
hash tag), so a burst of requests costs one write per node and loop turn, as on a single
server. The slot map comes from ``CLUSTER SLOTS`` of any node that answers:

- ``MOVED`` (the slot has another primary: a failover, a resharding): the command goes to the
  named node at once, and the map is read again;
- ``ASK`` (the slot is being migrated): the command goes to the named node after ``ASKING``;
- a node that cannot be reached (killed, until its replica is promoted): the request fails like
  any unreachable Redis (the API answers 503 or its static list) and the map is read again, at
  most every :data:`REFRESH_MIN_S`, until the promoted replica appears in it.

redis-py's cluster client was the simpler choice, but it costs the per-command CPU that made
the API write its own client (bench/api/redis_client.py, docs/benchmarks.md), and the worker's
fenced scripts, one call per slot on a cluster, go through this one for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
from redis.crc import key_slot

from reco_common.pipelined import PipelinedRedis, RedisReplyError, checked, pack

logger = logging.getLogger(__name__)

SLOTS = 16384
REFRESH_MIN_S = 0.25
_CLUSTER_SLOTS = pack("CLUSTER", "SLOTS")

Address = tuple[str, int]


def slot_of(key: str | bytes) -> int:
    """The Redis Cluster slot of ``key`` (its hash tag's, see ``RedisKeys``)."""
    return key_slot(key.encode() if isinstance(key, str) else key)


class ClusterPipelinedRedis:
    """The client (see the module docstring); ``urls`` are ``redis://`` URLs of some nodes."""

    def __init__(self, urls: list[str], *, timeout_s: float) -> None:
        self._template = urlsplit(urls[0])  # scheme and credentials of every node
        self._seeds = [_address(url) for url in urls]
        self._timeout_s = timeout_s
        self._nodes: dict[Address, PipelinedRedis] = {}
        self._slots: list[Address] = []
        self._refreshing: asyncio.Task[None] | None = None
        self._first_map: asyncio.Future[None] | None = None
        self._refreshed_at = float("-inf")

    async def execute(self, command: bytes, *, key: bytes | str | None = None) -> Any:
        """Send ``command`` (:func:`reco_common.pipelined.pack`) to the primary of ``key``'s slot
        (any primary without a key) and return its reply, following one redirect."""
        await self._mapped()
        address = self._slots[slot_of(key) if key is not None else 0]
        return await self._answer(self._node(address).execute(command), command)

    async def execute_many(self, commands: Sequence[tuple[bytes, int]]) -> list[Any]:
        """Send each ``(command, slot)`` (the slot of its keys, :func:`slot_of`) as
        :meth:`execute` would, all in this loop turn (one write per node, no task per command),
        and return the replies in order, a failed command's as its exception: every command is
        answered (or failed) before this returns."""
        await self._mapped()
        by_node: dict[Address, list[int]] = {}
        for place, (_, slot) in enumerate(commands):
            by_node.setdefault(self._slots[slot], []).append(place)
        sent: list[Awaitable[Any] | OSError] = [ConnectionError("not sent")] * len(commands)
        lasts = []
        for address, places in by_node.items():
            try:
                futures = await self._node(address).send_all([commands[p][0] for p in places])
            except OSError as exc:  # the node is unreachable: its commands fail, not the others
                self._refresh_soon()
                for place in places:
                    sent[place] = exc
                continue
            for place, future in zip(places, futures, strict=True):
                sent[place] = future
            lasts.append(futures[-1])
        if lasts:  # a connection answers in order: its last reply in, all are (one wake-up)
            await asyncio.wait(lasts)
        return [
            await self._settled(reply, command)
            for (command, _), reply in zip(commands, sent, strict=True)
        ]

    async def _settled(self, reply: Awaitable[Any] | OSError, command: bytes) -> Any:
        """The reply of a command of :meth:`execute_many`, or its exception (not raised)."""
        try:
            if isinstance(reply, OSError):
                raise reply
            answer = await reply
            if isinstance(answer, hiredis.ReplyError):  # rare: a redirect, a script's error
                return await self._redirected(RedisReplyError(str(answer)), command)
        except OSError as exc:
            self._refresh_soon()  # a failover: the promoted replica shows up in the map
            return exc
        except RedisReplyError as exc:
            return exc
        return answer

    async def _mapped(self) -> None:
        """The slot map read, once: the first requests share one read."""
        if self._slots:
            return
        first = self._first_map
        if first is None:
            first = self._first_map = asyncio.ensure_future(self._refresh())
        try:
            await asyncio.shield(first)
        finally:
            if first.done() and self._first_map is first:
                self._first_map = None

    async def _answer(self, reply: Awaitable[Any], command: bytes) -> Any:
        """``reply``, or ``command``'s after the redirect it was answered with."""
        try:
            return checked(await reply)
        except RedisReplyError as exc:
            return await self._redirected(exc, command)
        except OSError:
            self._refresh_soon()  # a failover: the promoted replica shows up in the map
            raise

    async def _redirected(self, error: RedisReplyError, command: bytes) -> Any:
        """``command`` sent again where ``MOVED`` or ``ASK`` says; any other error raised."""
        kind, _, rest = str(error).partition(" ")
        if kind not in ("MOVED", "ASK"):
            raise error
        target = _address_of(rest.split(" ")[-1])
        if kind == "ASK":
            return await self._node(target).execute_asking(command)
        self._refresh_soon()
        return await self._node(target).execute(command)

    async def aclose(self) -> None:
        for reading in (self._refreshing, self._first_map):
            if reading is not None:
                reading.cancel()
        for node in self._nodes.values():
            await node.aclose()

    def _node(self, address: Address) -> PipelinedRedis:
        node = self._nodes.get(address)
        if node is None:
            host, port = address
            netloc = self._template.netloc.rpartition("@")[0]
            url = urlunsplit(
                (
                    self._template.scheme,
                    f"{netloc}@{host}:{port}" if netloc else f"{host}:{port}",
                    "",
                    "",
                    "",
                )
            )
            node = self._nodes[address] = PipelinedRedis(url, timeout_s=self._timeout_s)
        return node

    def _refresh_soon(self) -> None:
        loop = asyncio.get_running_loop()
        if self._refreshing is None and loop.time() - self._refreshed_at >= REFRESH_MIN_S:
            self._refreshing = asyncio.create_task(self._refresh_logged())

    async def _refresh_logged(self) -> None:
        try:
            await self._refresh()
        except OSError as exc:
            logger.warning("Redis Cluster: no node answered CLUSTER SLOTS: %r", exc)
        finally:
            self._refreshing = None

    async def _refresh(self) -> None:
        """Read the slot map from the first node that answers (known primaries, then seeds)."""
        self._refreshed_at = asyncio.get_running_loop().time()
        error: Exception = ConnectionError("no Redis Cluster node given")
        for address in dict.fromkeys([*self._nodes, *self._seeds]):
            try:
                self._slots = _slot_map(
                    await self._node(address).execute(_CLUSTER_SLOTS), asked=address
                )
            except (OSError, RedisReplyError) as exc:
                error = exc
                continue
            return
        raise ConnectionError(f"no Redis Cluster node answered: {error}") from error


def _slot_map(ranges: list[list[Any]], *, asked: Address) -> list[Address]:
    """``CLUSTER SLOTS`` as the primary of each slot; every slot must be served."""
    slots: list[Address | None] = [None] * SLOTS
    for start, end, primary, *_ in ranges:
        host = primary[0].decode() if primary[0] else asked[0]  # empty: the node asked
        for slot in range(int(start), int(end) + 1):
            slots[slot] = (host, int(primary[1]))
    if any(address is None for address in slots):
        raise ConnectionError("the Redis Cluster does not serve every slot")
    return [address for address in slots if address is not None]


def _address(url: str) -> Address:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def _address_of(endpoint: str) -> Address:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)
