"""The worker's fenced writes, the controller's records and the API's reads on a real Redis
Cluster: one layout, every script single-slot, the same results as on one server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cluster_nodes import Node, nodes, primary_of, replica_of, until_primary
from prometheus_client import CollectorRegistry, Counter
from redis import Redis

from reco_api.metrics import ApiMetrics
from reco_api.store import ServedStore
from reco_common.contracts import (
    REDIS_LAYOUT,
    ActiveModel,
    RecommendationList,
    decode_recommendations,
)
from reco_common.pipelined_cluster import slot_of
from reco_common.redis_store import (
    Epoch,
    FencedLists,
    FencedWrite,
    LayoutMismatch,
    ModelRecords,
    Position,
    RedisClient,
    check_layout,
    read_active,
    replace_lists,
)
from reco_common.settings import RedisSettings
from reco_worker.history import Addition, HistoryStore

USERS = [f"u{n}" for n in range(300)]


def _member(n: int) -> bytes:
    return f"1\te{n}\ti{n % 17}\tview\t".encode()


def _history(redis: RedisClient, settings: RedisSettings) -> HistoryStore:
    bad = Counter("bad", "bad", registry=CollectorRegistry())
    return HistoryStore(redis, settings.keys, max_len=5, ttl_s=3600, bad_members=bad)


async def test_fenced_lists_are_written_per_slot_and_refuse_older_positions(
    cluster_redis: RedisClient, cluster_settings: RedisSettings
) -> None:
    keys = cluster_settings.keys
    lists = FencedLists(cluster_redis, keys)
    primaries = {primary_of(keys.recommendations("m", u)).port for u in USERS}
    assert len(primaries) == 3  # the batch spans every primary

    newer = {u: FencedWrite(b"v10", Position(1, 10)) for u in USERS}
    assert await lists.replace("m", newer) == 0
    older = {u: FencedWrite(b"v9", Position(1, 9)) for u in USERS}
    assert await lists.replace("m", older) == len(USERS)
    same = {u: FencedWrite(b"v10b", Position(1, 10)) for u in USERS[:7]}
    assert await lists.replace("m", same) == 7
    assert await lists.replace("m", same, or_equal=True) == 0
    other_partition = {"u0": FencedWrite(b"p2", Position(2, 0))}  # compared within a partition
    assert await lists.replace("m", other_partition) == 0

    values = await cluster_redis.mget_nonatomic([keys.recommendations("m", u) for u in USERS])
    assert values[:3] == [b"p2", b"v10b", b"v10b"]
    assert values[7:] == [b"v10"] * (len(USERS) - 7)


async def test_histories_are_appended_read_back_and_rebuilt_per_slot(
    cluster_redis: RedisClient, cluster_settings: RedisSettings
) -> None:
    history = _history(cluster_redis, cluster_settings)
    additions = {
        u: Addition(Position(0, 5), {_member(n): 1000.0 + n, _member(n + 1000): 2000.0 + n})
        for n, u in enumerate(USERS)
    }
    read = await history.append_and_read(additions)
    assert list(read) == USERS
    assert read["u3"].item_ids == ["i3", f"i{1003 % 17}"]
    again = await history.append_and_read(
        {u: Addition(Position(0, 5), {_member(9999): 1.0}) for u in USERS}
    )
    assert again == read  # a redelivered batch (the same position) changes nothing
    assert await history.rebuild(additions) == {}  # stored = what was sent
    more = {"u1": Addition(Position(0, 6), {_member(5): 3000.0})}
    await history.append_and_read(more)
    stored = await history.rebuild({"u1": additions["u1"], "u2": additions["u2"]})
    assert list(stored) == ["u1"]  # only the history holding more than was sent is read back
    assert stored["u1"].ts == [1001.0, 2001.0, 3000.0]


async def test_a_node_without_the_scripts_gets_them_again(
    cluster_redis: RedisClient, cluster_settings: RedisSettings
) -> None:
    """A promoted replica or a restarted node may lack the scripts: NOSCRIPT, loaded, sent again."""
    keys = cluster_settings.keys
    lists = FencedLists(cluster_redis, keys)
    assert await lists.replace("m", {u: FencedWrite(b"a", Position(0, 1)) for u in USERS}) == 0
    for node in nodes():
        if node.primary:
            Redis(port=node.port).script_flush()
    assert await lists.replace("m", {u: FencedWrite(b"b", Position(0, 2)) for u in USERS}) == 0
    assert await cluster_redis.get(keys.recommendations("m", "u42")) == b"b"


async def test_fenced_writes_follow_a_slot_being_resharded(
    cluster_redis: RedisClient, cluster_settings: RedisSettings, unique: str
) -> None:
    """A slot moving to another primary mid-stream: served by its old primary while its keys
    are there, after ``ASK`` by the new one once they moved, after ``MOVED`` once the slot is
    handed over; the fence holds throughout (the scripts declare every key they touch)."""
    keys = cluster_settings.keys
    user = f"resharded-{unique}"  # a slot of its own: no other test's keys move with it
    lists, history = FencedLists(cluster_redis, keys), _history(cluster_redis, cluster_settings)
    others = {u: FencedWrite(b"o", Position(0, 1)) for u in USERS}

    async def write(value: bytes, offset: int) -> int:
        await history.append_and_read({user: Addition(Position(0, offset), {_member(offset): 1.0})})
        return await lists.replace("m", {user: FencedWrite(value, Position(0, offset))} | others)

    slot = slot_of(keys.user_fence(user))
    source = primary_of(keys.user_fence(user))
    target = next(n for n in nodes() if n.primary and n.port != source.port)
    assert await write(b"v1", 1) == 0
    try:
        _migrating(slot, source, target)
        assert await write(b"v2", 2) == len(USERS)  # keys still on the source: served there
        _move_keys(slot, source, target)
        assert await write(b"v3", 3) == len(USERS)  # the source answers ASK
        assert await lists.replace("m", {user: FencedWrite(b"old", Position(0, 2))}) == 1
        _hand_over(slot, target)
        assert await write(b"v4", 4) == len(USERS)  # the source answers MOVED
    finally:
        _migrating(slot, target, source)
        _move_keys(slot, target, source)
        _hand_over(slot, source)
    assert await cluster_redis.get(keys.recommendations("m", user)) == b"v4"
    stored = await history.rebuild({user: Addition(Position(0, 1), {_member(1): 1.0})})
    assert [len(h.ts) for h in stored.values()] == [4]  # every append applied, once


def _migrating(slot: int, source: Node, target: Node) -> None:
    Redis(port=target.port).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    Redis(port=source.port).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)


def _move_keys(slot: int, source: Node, target: Node) -> None:
    redis = Redis(port=source.port)
    moving = redis.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    if moving:
        redis.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving)


def _hand_over(slot: int, owner: Node) -> None:
    for node in nodes():
        if node.primary:
            Redis(port=node.port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner.node_id)


async def test_the_controllers_records_are_one_slot(
    cluster_redis: RedisClient, cluster_settings: RedisSettings
) -> None:
    records = ModelRecords(cluster_redis, cluster_settings.keys)
    active = ActiveModel(
        model_name="shop",
        version="v2",
        artifact_uri="file:///m/v2",
        activated_at=datetime.now(UTC),
        popular_items=["p1"],
        popular_scores=[1.0],
    )
    assert await records.activate(active, epoch=Epoch("d1", 5))
    assert not await records.activate(active, epoch=Epoch("d1", 4))  # an older epoch: refused
    assert await read_active(cluster_redis, cluster_settings.keys, "shop") == active


async def test_the_api_reads_every_slot_and_follows_a_failover(
    cluster_redis: RedisClient, cluster_settings: RedisSettings
) -> None:
    """The API's pipelined client routes by slot; after a manual failover the old primary
    answers MOVED and the client follows it, reading the map again."""
    keys = cluster_settings.keys
    stored = RecommendationList(
        model_version="v1", computed_at=datetime.now(UTC), items=["i1"], scores=[1.0]
    )
    await replace_lists(cluster_redis, keys, "m", {u: stored for u in USERS})
    registry = CollectorRegistry()
    store = ServedStore.open(cluster_settings, timeout_s=2.0, metrics=ApiMetrics.create(registry))
    try:
        values = [await store.read_list("m", u) for u in USERS]
        assert all(v is not None and decode_recommendations(v) == stored for v in values)
        assert await store.read_list("m", "nobody") is None

        old = primary_of(keys.recommendations("m", "u1"))
        replica = replica_of(old)
        Redis(port=replica.port).execute_command("CLUSTER", "FAILOVER")
        await until_primary(replica.port)
        value = await store.read_list("m", "u1")
        assert value is not None
        assert decode_recommendations(value) == stored
        assert await store.ping()
    finally:
        await store.close()
    errors = [
        sample
        for family in registry.collect()
        if family.name == "reco_api_redis_errors"
        for sample in family.samples
        if sample.value
    ]
    assert errors == []  # the redirect was followed, not answered as an error


async def test_the_layout_is_recorded_and_another_one_refused(
    cluster_redis: RedisClient, cluster_settings: RedisSettings
) -> None:
    keys = cluster_settings.keys
    await check_layout(cluster_redis, keys)  # a fresh prefix: layout 2 recorded
    assert await cluster_redis.get(keys.layout()) == str(REDIS_LAYOUT).encode()
    await check_layout(cluster_redis, keys)  # and accepted
    await cluster_redis.set(keys.layout(), b"1")
    with pytest.raises(LayoutMismatch, match="layout 1"):
        await check_layout(cluster_redis, keys)
    await cluster_redis.delete(keys.layout())
    await cluster_redis.set(keys.generation(), b"g")  # layout 1 wrote the marker, no layout
    with pytest.raises(LayoutMismatch, match="flush the prefix"):
        await check_layout(cluster_redis, keys)
