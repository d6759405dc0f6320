"""A reader never sees a partial or empty list while the worker replaces it; stale writes lose."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from reco_common.contracts import REDIS_LAYOUT, RecommendationList, RedisKeys, encode
from reco_common.redis_store import (
    FencedLists,
    FencedWrite,
    LayoutMismatch,
    Position,
    check_layout,
    mark_layout,
    read_list,
    replace_lists,
)

LIST_LENGTH = 100
ROUNDS = 300


def _list(generation: int) -> RecommendationList:
    return RecommendationList(
        model_version=f"v{generation}",
        computed_at=datetime.now(UTC),
        items=[f"g{generation}-i{i}" for i in range(LIST_LENGTH)],
        scores=[float(LIST_LENGTH - i) for i in range(LIST_LENGTH)],
    )


async def test_concurrent_readers_see_whole_lists_only(redis: Redis, unique: str) -> None:
    keys = RedisKeys(f"t{unique}")
    await replace_lists(redis, keys, "shop", {"u1": _list(0)})
    done = asyncio.Event()
    observed: list[RecommendationList | None] = []

    async def writer() -> None:
        for generation in range(1, ROUNDS):
            await replace_lists(redis, keys, "shop", {"u1": _list(generation), "u2": _list(0)})
        done.set()

    async def reader() -> None:
        while not done.is_set():
            observed.append(await read_list(redis, keys, "shop", "u1"))

    await asyncio.gather(writer(), reader(), reader())
    assert len(observed) > 10
    for value in observed:
        assert value is not None
        generation = value.model_version[1:]
        assert value.items == [f"g{generation}-i{i}" for i in range(LIST_LENGTH)]
    final = await read_list(redis, keys, "shop", "u1")
    assert final is not None
    assert final.model_version == f"v{ROUNDS - 1}"


async def test_a_fenced_list_is_replaced_only_from_a_newer_position(
    redis: Redis, unique: str
) -> None:
    keys = RedisKeys(f"t{unique}")
    lists = FencedLists(redis, keys)

    async def write(generation: int, partition: int, offset: int) -> int:
        value = encode(_list(generation))
        return await lists.replace("shop", {"u1": FencedWrite(value, Position(partition, offset))})

    async def stored() -> str | None:
        value = await read_list(redis, keys, "shop", "u1")
        return None if value is None else value.model_version

    assert await write(1, partition=0, offset=10) == 0
    assert (await write(2, partition=0, offset=9), await stored()) == (1, "v1")  # stale
    assert (await write(3, partition=0, offset=10), await stored()) == (1, "v1")  # same position
    assert (await write(4, partition=0, offset=11), await stored()) == (0, "v4")
    # Positions are compared within a partition (a user moved by new partitions starts anew).
    assert (await write(5, partition=1, offset=0), await stored()) == (0, "v5")


async def test_a_batch_larger_than_luas_stack_is_fenced_per_partition(
    redis: Redis, unique: str
) -> None:
    keys = RedisKeys(f"t{unique}")
    lists = FencedLists(redis, keys)
    users = [f"u{n}" for n in range(1500)]

    def batch(generation: int, offset: int) -> dict[str, FencedWrite]:
        value = encode(_list(generation))
        return {u: FencedWrite(value, Position(n % 2, offset)) for n, u in enumerate(users)}

    assert await lists.replace("shop", batch(1, offset=10)) == 0
    assert await lists.replace("shop", batch(2, offset=5)) == len(users)
    assert await lists.replace("shop", batch(3, offset=11)) == 0
    stored = {(await read_list(redis, keys, "shop", u)).model_version for u in users}  # type: ignore[union-attr]
    assert stored == {"v3"}


class _OtherWorkerStartsBeforeExists:
    """The real Redis, with another worker of this code starting (layout recorded, then its
    generation marker) between the first one's read of the layout and its look for a marker."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis, self._keys = redis, keys

    def __getattr__(self, name: str) -> object:
        return getattr(self._redis, name)

    async def exists(self, *names: str) -> int:
        await mark_layout(self._redis, self._keys)
        await self._redis.set(self._keys.generation(), b"other", nx=True)
        return int(await self._redis.exists(*names))


async def test_workers_starting_together_agree_on_the_layout(redis: Redis, unique: str) -> None:
    keys = RedisKeys(f"t{unique}")
    await check_layout(_OtherWorkerStartsBeforeExists(redis, keys), keys)  # type: ignore[arg-type]
    assert await redis.get(keys.layout()) == str(REDIS_LAYOUT).encode()
    await redis.delete(keys.layout())  # the marker alone is what layout 1 left
    with pytest.raises(LayoutMismatch, match="layout 1"):
        await check_layout(redis, keys)
