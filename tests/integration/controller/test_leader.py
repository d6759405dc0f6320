"""Two controller processes: one leader acts; when it is killed, the other takes over."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from controller_kube import (
    RolloutLog,
    controllers,
    lease_holder,
    model_uri_of,
    published,
    read_lease,
    settled,
    uri,
)
from kubernetes_asyncio.client import ApiClient

from reco_common.contracts import ModelPublished
from reco_controller.settings import Settings
from reco_controller.targets.deployment import Deployment

Send = Callable[[ModelPublished], Awaitable[None]]


async def test_one_leader_acts_and_the_other_takes_over_when_it_is_killed(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    settings: Settings,
    send: Send,
    rollout_log: RolloutLog,
    tmp_path: Path,
) -> None:
    async with controllers(settings, tmp_path, "alpha", "beta") as procs:
        leader = await lease_holder(admin, namespace, {"alpha", "beta"})
        (follower,) = set(procs) - {leader}

        await send(published("v2"))
        await rollout_log.reaches("v2", "succeeded")
        assert rollout_log.statuses("v2") == ["started", "succeeded"]
        assert model_uri_of(await settled(admin, namespace)) == uri("v2")

        procs[leader].kill()  # SIGKILL: no release, the follower must wait for expiry
        await procs[leader].wait()
        assert await lease_holder(admin, namespace, {follower}) == follower

        await send(published("v3", hours=2))
        await rollout_log.reaches("v3", "succeeded")
        assert model_uri_of(await settled(admin, namespace)) == uri("v3")
        lease = await read_lease(admin, namespace)
        assert lease.spec.lease_transitions == 1

        procs[follower].send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await procs[follower].wait() == 0
        assert not (await read_lease(admin, namespace)).spec.holder_identity, "released on SIGTERM"

    logs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    assert "started v2" in logs[leader]
    assert "started v3" in logs[follower]
    assert "started v2" not in logs[follower], "the follower never acted on v2"
    assert rollout_log.statuses("v2") == ["started", "succeeded"]
