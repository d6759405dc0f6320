"""Controller processes killed or paused mid-rollout on the real control plane: the state is on
the Deployment, the active record follows the rollout, and a deposed leader writes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from controller_kube import (
    MODEL,
    RolloutLog,
    controllers,
    exhaust_pod_quota,
    lease_holder,
    lift_pod_quota,
    model_uri_of,
    published,
    read_worker,
    settled,
    uri,
)
from kubernetes_asyncio.client import ApiClient
from redis.asyncio import Redis

from reco_common.contracts import MODEL_URI_ENV, ModelPublished
from reco_controller.settings import Settings
from reco_controller.targets.deployment import Deployment
from reco_devkit.observe import ActiveVersions, active_version

Send = Callable[[ModelPublished], Awaitable[None]]


async def _active_is(redis: Redis, settings: Settings, version: str, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while await active_version(redis, settings.redis, MODEL) != version:
            await asyncio.sleep(0.1)


async def _patched_to(admin: ApiClient, namespace: str, version: str) -> None:
    async with asyncio.timeout(30):
        while model_uri_of(await read_worker(admin, namespace)) != uri(version):
            await asyncio.sleep(0.1)


async def _nothing_more(log: RolloutLog, *, for_s: float) -> list[str]:
    """The rollout events that arrive within ``for_s``."""
    before = len(log.events)
    try:
        await log.until(lambda log: len(log.events) > before, timeout_s=for_s)
    except TimeoutError:
        return []
    return [f"{e.version} {e.status.value}" for e in log.events[before:]]


# Two controller processes start (importing the Kubernetes client takes tens of seconds on a
# loaded 2-core machine), then a lease expiry and a consumer-group session timeout pass; the
# waits below add up to ~490 s at most (CI timed out at 400 s on a slower machine).
@pytest.mark.timeout(600)
async def test_a_controller_killed_mid_rollout_resumes_it_after_restart(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    settings: Settings,
    send: Send,
    rollout_log: RolloutLog,
    redis: Redis,
    tmp_path: Path,
) -> None:
    await exhaust_pod_quota(admin, namespace)  # the rollout of v2 hangs: no pod can start
    async with controllers(settings, tmp_path, "first") as procs:
        await _active_is(redis, settings, "v1", timeout_s=180)
        watch = ActiveVersions(redis, settings.redis, MODEL)
        await send(published("v2"))
        await rollout_log.reaches("v2", "started")
        await _patched_to(admin, namespace, "v2")
        await asyncio.sleep(1.0)  # a premature switch would show within two checks
        procs["first"].kill()  # SIGKILL mid-rollout: nothing committed, nothing released
        await procs["first"].wait()
    before_restart = await watch.stop()
    assert before_restart == {"v1"}, "a rollout in flight leaves the active record on v1"

    watch = ActiveVersions(redis, settings.redis, MODEL)
    async with controllers(settings, tmp_path, "second"):
        # The event was never committed: the next leader gets it and resumes (the quota is
        # lifted only then, or the Deployment would finish alone before it looks).
        await rollout_log.until(lambda log: log.statuses("v2").count("started") == 2, timeout_s=90)
        assert rollout_log.reason("v2") == "resumed"
        assert await active_version(redis, settings.redis, MODEL) == "v1"
        await lift_pod_quota(admin, namespace)
        await rollout_log.reaches("v2", "succeeded", timeout_s=120)
        await _active_is(redis, settings, "v2", timeout_s=5)
    assert rollout_log.statuses("v2") == ["started", "started", "succeeded"]
    assert model_uri_of(await settled(admin, namespace)) == uri("v2")
    assert await watch.stop() <= {"v1", "v2"}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("progress_deadline_s", [5])
async def test_a_leader_paused_past_its_lease_writes_nothing_when_it_wakes(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    settings: Settings,
    send: Send,
    rollout_log: RolloutLog,
    redis: Redis,
    tmp_path: Path,
) -> None:
    """The leader is SIGSTOPped while it waits for a rollout of v2 (stuck on the quota). The
    follower takes over, resumes v2, sees it fail and rolls it back, then rolls out v3. Woken
    (SIGCONT) with v2 still in hand and its own rollout bound long passed, the old leader must
    neither patch the Deployment, nor report anything, nor touch the active record."""
    await exhaust_pod_quota(admin, namespace)
    async with controllers(settings, tmp_path, "alpha", "beta", rollout_timeout_s="8") as procs:
        leader = await lease_holder(admin, namespace, {"alpha", "beta"}, timeout_s=180)
        (follower,) = set(procs) - {leader}
        await _active_is(redis, settings, "v1")
        await send(published("v2"))
        await rollout_log.reaches("v2", "started")
        await _patched_to(admin, namespace, "v2")
        os.kill(procs[leader].pid, signal.SIGSTOP)
        try:
            assert await lease_holder(admin, namespace, {follower}, timeout_s=180) == follower
            await rollout_log.reaches("v2", "rolled_back", timeout_s=90)
            await lift_pod_quota(admin, namespace)
            await send(published("v3", hours=2))
            await rollout_log.reaches("v3", "succeeded", timeout_s=90)
            await _active_is(redis, settings, "v3", timeout_s=5)
            before = await settled(admin, namespace)
        finally:
            os.kill(procs[leader].pid, signal.SIGCONT)
        late = await _nothing_more(rollout_log, for_s=6.0)
        after = await read_worker(admin, namespace)
        assert procs[leader].returncode is None, "the old leader is alive and running again"

    assert late == [], f"the deposed leader reported {late}"
    assert after.metadata.generation == before.metadata.generation, "no patch after the wake"
    assert after.metadata.annotations == before.metadata.annotations
    assert after.container("worker").env_value(MODEL_URI_ENV) == uri("v3")
    assert await active_version(redis, settings.redis, MODEL) == "v3"
    assert rollout_log.statuses("v2") == ["started", "started", "failed", "rolled_back"]
    woken = (tmp_path / f"{leader}.log").read_text()
    assert "stepping down" in woken or "the lease expired before the write" in woken
