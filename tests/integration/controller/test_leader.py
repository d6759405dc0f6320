"""Two controller processes: one leader acts; when it is killed, the other takes over."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from controller_kube import MODEL, WORKER, RolloutLog, model_uri_of, published, settled, uri
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, V1Lease
from kubernetes_asyncio.client.exceptions import ApiException

from reco_common.contracts import ModelPublished
from reco_controller.settings import Settings
from reco_controller.targets.deployment import Deployment

Send = Callable[[ModelPublished], Awaitable[None]]


def _environment(settings: Settings, identity: str) -> dict[str, str]:
    conf = settings.controller
    return {
        **os.environ,
        "RECO_KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
        "RECO_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RECO_CONTROLLER_NAMESPACE": conf.namespace,
        "RECO_CONTROLLER_DEPLOYMENTS": f'{{"{MODEL}": "{WORKER}"}}',
        "RECO_CONTROLLER_KUBECONFIG": str(conf.kubeconfig),
        "RECO_CONTROLLER_GROUP_ID": conf.group_id,
        "RECO_CONTROLLER_IDENTITY": identity,
        "RECO_CONTROLLER_POLL_INTERVAL_S": "0.2",
        "RECO_CONTROLLER_LEASE_DURATION_S": "4",
        "RECO_CONTROLLER_RENEW_DEADLINE_S": "3",
        "RECO_CONTROLLER_RETRY_PERIOD_S": "0.5",
        "RECO_CONTROLLER_HEALTH_HOST": "127.0.0.1",
        "RECO_CONTROLLER_HEALTH_PORT": "0",
    }


@asynccontextmanager
async def _controllers(
    settings: Settings, logs: Path, *identities: str
) -> AsyncIterator[dict[str, asyncio.subprocess.Process]]:
    """``reco-controller run`` once per identity, each logging to ``logs/<identity>.log``."""
    procs = {}
    try:
        for identity in identities:
            with (logs / f"{identity}.log").open("wb") as log:
                procs[identity] = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "reco_controller",
                    "run",
                    env=_environment(settings, identity),
                    stdout=log,
                    stderr=log,
                )
        yield procs
    finally:
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def _lease(admin: ApiClient, namespace: str) -> V1Lease:
    return await CoordinationV1Api(admin).read_namespaced_lease("reco-controller", namespace)


async def _holder(admin: ApiClient, namespace: str, among: set[str]) -> str:
    """The Lease's holder once it is one of ``among`` (bounded)."""
    async with asyncio.timeout(60):
        while True:
            try:
                holder = (await _lease(admin, namespace)).spec.holder_identity
            except ApiException as exc:
                if exc.status != 404:  # 404: not created yet
                    raise
                holder = None
            if holder in among:
                return str(holder)
            await asyncio.sleep(0.2)


async def test_one_leader_acts_and_the_other_takes_over_when_it_is_killed(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    settings: Settings,
    send: Send,
    rollout_log: RolloutLog,
    tmp_path: Path,
) -> None:
    async with _controllers(settings, tmp_path, "alpha", "beta") as procs:
        leader = await _holder(admin, namespace, {"alpha", "beta"})
        (follower,) = set(procs) - {leader}

        await send(published("v2"))
        await rollout_log.reaches("v2", "succeeded")
        assert rollout_log.statuses("v2") == ["started", "succeeded"]
        assert model_uri_of(await settled(admin, namespace)) == uri("v2")

        procs[leader].kill()  # SIGKILL: no release, the follower must wait for expiry
        await procs[leader].wait()
        assert await _holder(admin, namespace, {follower}) == follower

        await send(published("v3", hours=2))
        await rollout_log.reaches("v3", "succeeded")
        assert model_uri_of(await settled(admin, namespace)) == uri("v3")
        lease = await _lease(admin, namespace)
        assert lease.spec.lease_transitions == 1

        procs[follower].send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await procs[follower].wait() == 0
        assert not (await _lease(admin, namespace)).spec.holder_identity, "released on SIGTERM"

    logs = {name: (tmp_path / f"{name}.log").read_text() for name in procs}
    assert "started v2" in logs[leader]
    assert "started v3" in logs[follower]
    assert "started v2" not in logs[follower], "the follower never acted on v2"
    assert rollout_log.statuses("v2") == ["started", "succeeded"]
