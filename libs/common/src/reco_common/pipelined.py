"""A Redis connection that pipelines by itself: one connection, one write per loop turn.

Written for the API, which sends one ``GET`` per request and nothing else; the worker's fenced
scripts on a Redis Cluster go through it too (``reco_common.pipelined_cluster``,
``reco_common.redis_store.call_per_slot``). With redis-py every request takes a
pooled connection and makes its own write and read system calls, and its Python per command
(connection checkout, command packing, response parsing, release) cost ~80-200 µs of CPU per
``MGET``, more than the rest of the request together (bench/api/redis_client.py,
docs/benchmarks.md). Here every command issued during one turn of the event loop goes out in one
write on one connection, and the replies, parsed by hiredis (redis-py's own C parser), resolve
their futures in order: Redis answers the commands of a connection in the order they came. valkey-glide
(a Rust core doing the same multiplexing) was measured too: ~100 µs of CPU per ``MGET``.

Failure handling keeps the store's contract (fail fast, never hang):

- a command unanswered after ``timeout_s`` fails with :class:`TimeoutError`, and so do all those
  behind it: the connection is closed (a hung Redis) and the next command opens a new one. One
  timer per connection checks the oldest command, not one per command;
- a lost connection fails every pending command with :class:`ConnectionError`; the next command
  reconnects (``timeout_s`` for the connect, ``AUTH`` and ``SELECT`` from the URL).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ResponseError

logger = logging.getLogger(__name__)


class RedisReplyError(ResponseError):
    """Redis answered a command with an error (``-ERR …``); a ``RedisError``, as redis-py's
    replies, so that callers handle both clients' refusals alike."""


def pack(*args: bytes | str) -> bytes:
    """One command in the Redis protocol (RESP2), packed by hiredis (C)."""
    packed: bytes = hiredis.pack_command(cast(Any, args))  # its stub: a tuple of one argument
    return packed


_ASKING = pack("ASKING")


def checked(reply: Any) -> Any:
    """``reply`` as parsed, unless Redis answered an error: :class:`RedisReplyError` raised."""
    if isinstance(reply, hiredis.ReplyError):
        raise RedisReplyError(str(reply))
    return reply


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: queued commands, the futures of their replies, in order."""

    def __init__(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader()
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future, _ = self._pending.popleft()
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # a reply nobody asked for
            self._fail(ConnectionError(f"Redis protocol error: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command``; every command queued during this loop turn leaves in one write."""
        if self.closed:
            raise ConnectionError("Redis connection closed")
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append((future, self._loop.time() + self._timeout_s))
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout_s, self._check_oldest)
        return future

    def close(self) -> None:
        self._fail(ConnectionError("Redis connection closed"))

    def _flush(self) -> None:
        if not self.closed and self._transport is not None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _check_oldest(self) -> None:
        # The oldest command, answered or not by a caller still waiting (a cancelled caller's
        # reply is due all the same: replies come in order), past its deadline: Redis hangs.
        self._watchdog = None
        if not self._pending:
            return
        deadline = self._pending[0][1]
        if self._loop.time() >= deadline:
            self._fail(TimeoutError(f"Redis did not answer within {self._timeout_s:g} s"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._check_oldest)

    def _fail(self, exc: Exception) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._transport is not None:
            self._transport.abort()
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a caller that gave up must not log it


class PipelinedRedis:
    """The client: commands go to the current connection, a new one after a failure."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL: {parts.scheme}://…")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._ssl = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._setup: list[bytes] = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            auth = (user, unquote(parts.password)) if user else (unquote(parts.password),)
            self._setup.append(pack("AUTH", *auth))
        db = parts.path.lstrip("/")
        if db and db != "0":
            self._setup.append(pack("SELECT", db))
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    async def execute(self, command: bytes, *, key: bytes | str | None = None) -> Any:
        """Send one packed command (:func:`pack`) and return its reply; one retry on a
        connection found closed (a Redis restart), none on a timeout. ``key`` routes a
        command on a cluster (``reco_common.pipelined_cluster``); one server serves every key."""
        try:
            return await self._execute_once(command)
        except ConnectionError:
            return await self._execute_once(command)

    async def execute_asking(self, command: bytes) -> Any:
        """``command`` after ``ASKING``, in the same write (a Redis Cluster's ``ASK`` redirect:
        the slot is moving to this node)."""
        connection = await self._live()
        asking = connection.send(_ASKING)
        reply = await connection.send(command)
        await asking
        return checked(reply)

    async def send_all(self, commands: Sequence[bytes]) -> list[asyncio.Future[Any]]:
        """Queue ``commands`` in order, to leave in this loop turn's write; the futures of their
        replies as parsed (an error reply unraised, see :func:`checked`; no retry). Many
        commands at once without a task or a check each (the worker's fenced scripts on a
        cluster, ``reco_common.redis_store.call_per_slot``)."""
        connection = await self._live()
        return [connection.send(command) for command in commands]

    async def _execute_once(self, command: bytes) -> Any:
        connection = await self._live()
        return checked(await connection.send(command))

    async def _live(self) -> _Connection:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connected()
        return connection

    async def _connected(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout_s):
            _, connection = await loop.create_connection(
                lambda: _Connection(self._timeout_s), self._host, self._port, ssl=self._ssl
            )
            for command in self._setup:
                reply = await connection.send(command)
                if isinstance(reply, hiredis.ReplyError):
                    connection.close()
                    raise ConnectionError(f"Redis refused the connection setup: {reply}")
        self._connection = connection
        return connection

    async def aclose(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
