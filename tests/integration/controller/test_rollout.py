"""A published model rolls the worker Deployment on the real control plane, or is refused."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from controller_kube import (
    BETTER,
    MODEL,
    WORKER,
    WORSE,
    RolloutLog,
    exhaust_pod_quota,
    model_uri_of,
    published,
    read_worker,
    settled,
    uri,
    write_model,
)
from kubernetes_asyncio.client import ApiClient, AppsV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from redis.asyncio import Redis

from reco_common.contracts import MODEL_MANIFEST_SHA256_ENV, MODEL_URI_ENV, ModelPublished, ModelRef
from reco_common.redis_store import read_active
from reco_controller.kube import api_client
from reco_controller.service import Controller
from reco_controller.settings import Settings
from reco_controller.targets.deployment import ACTIVE, FAILED_URI, PREVIOUS, Deployment, annotation
from reco_controller.targets.kubernetes import KubernetesTarget
from reco_devkit.observe import ActiveVersions, active_version

Send = Callable[[ModelPublished], Awaitable[None]]


async def _replica_sets(admin: ApiClient, namespace: str) -> dict[str, int]:
    """MODEL_URI of each ReplicaSet's pod template → its ready replicas."""
    found = await AppsV1Api(admin).list_namespaced_replica_set(namespace)
    return {
        next(e.value for e in rs.spec.template.spec.containers[0].env if e.name == MODEL_URI_ENV): (
            rs.status.ready_replicas or 0
        )
        for rs in found.items
    }


async def _active_is(redis: Redis, settings: Settings, version: str) -> None:
    """Bounded wait until the model's active record names ``version``."""
    async with asyncio.timeout(30):
        while await active_version(redis, settings.redis, MODEL) != version:
            await asyncio.sleep(0.1)


async def test_a_published_model_is_rolled_out(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    controller: Controller,
    send: Send,
    rollout_log: RolloutLog,
    redis: Redis,
    settings: Settings,
) -> None:
    await _active_is(redis, settings, "v1")  # what the Deployment runs, once the leader checked
    event = published("v2")
    await send(event)
    await rollout_log.reaches("v2", "succeeded")
    active = await read_active(redis, settings.redis.keys, MODEL)
    assert active is not None, "switched before the succeeded event"
    assert (active.version, active.artifact_uri) == ("v2", uri("v2"))
    assert active.popular_items == ["i1"], "the popular list of v2's artifact"

    assert rollout_log.statuses("v2") == ["started", "succeeded"]
    after = await settled(admin, namespace)
    assert model_uri_of(after) == uri("v2")
    env = {e.name: e.value for e in after.container("worker").env}
    assert env == {
        "RECO_LOG_JSON": "true",
        MODEL_URI_ENV: uri("v2"),
        MODEL_MANIFEST_SHA256_ENV: event.manifest_sha256,  # the pin the workers verify
        "RECO_KAFKA_BOOTSTRAP": "kafka:9092",
    }, "the other env vars are untouched"
    notes = after.metadata.annotations
    assert notes[annotation(ACTIVE, "version")] == "v2"
    assert notes[annotation(PREVIOUS, "uri")] == uri("v1")
    assert notes[annotation(PREVIOUS, "version")] == "v1"
    assert after.metadata.generation == worker.metadata.generation + 1
    assert await _replica_sets(admin, namespace) == {uri("v1"): 0, uri("v2"): 2}


async def test_a_model_below_the_gate_is_rejected_and_the_deployment_untouched(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    controller: Controller,
    send: Send,
    rollout_log: RolloutLog,
) -> None:
    await send(published("v2", metrics=WORSE))
    await rollout_log.reaches("v2", "rejected")

    assert rollout_log.statuses("v2") == ["rejected"]
    assert "50.0% below the active model's 0.2" in rollout_log.events[-1].reason
    after = await read_worker(admin, namespace)
    assert after.metadata.generation == worker.metadata.generation
    assert after.metadata.annotations == worker.metadata.annotations
    assert model_uri_of(after) == uri("v1")


async def test_the_same_event_twice_rolls_out_once(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    controller: Controller,
    send: Send,
    rollout_log: RolloutLog,
) -> None:
    await send(published("v2"))
    await rollout_log.reaches("v2", "succeeded")
    await send(published("v2"))
    # A later event on the same partition: once it is decided, the duplicate was consumed.
    await send(published("v3", metrics=WORSE))
    await rollout_log.reaches("v3", "rejected")

    assert rollout_log.statuses("v2") == ["started", "succeeded"]
    after = await read_worker(admin, namespace)
    assert after.metadata.generation == worker.metadata.generation + 1
    assert after.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    assert model_uri_of(after) == uri("v2")


@pytest.mark.parametrize("progress_deadline_s", [2])
@pytest.mark.timeout(300)  # three rollouts through kube-controller-manager: > 120 s once in CI
async def test_a_rollout_that_cannot_become_ready_is_rolled_back(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    controller: Controller,
    send: Send,
    rollout_log: RolloutLog,
    redis: Redis,
    settings: Settings,
) -> None:
    await exhaust_pod_quota(admin, namespace)
    await _active_is(redis, settings, "v1")
    watch = ActiveVersions(redis, settings.redis, MODEL)
    await send(published("v2"))
    await rollout_log.reaches("v2", "rolled_back")
    await asyncio.sleep(1.0)  # a late switch would show within a few checks of the leader
    assert await watch.stop() == {"v1"}, "the failed rollout left the active record on v1"

    assert rollout_log.statuses("v2") == ["started", "failed", "rolled_back"]
    failed, rolled_back = rollout_log.events[-2:]
    assert "exceeded its progress deadline" in failed.reason
    assert "exceeded quota" in failed.reason
    assert rolled_back.reason.startswith(f"back to {uri('v1')}: ")
    after = await settled(admin, namespace)
    assert model_uri_of(after) == uri("v1")
    notes = after.metadata.annotations
    assert notes[annotation(ACTIVE, "version")] == "v1"
    assert notes[FAILED_URI] == uri("v2")
    assert (await _replica_sets(admin, namespace))[uri("v1")] == 2

    # Redelivered (or published again), the failed model is not tried a second time.
    await send(published("v2"))
    await send(published("v3", metrics=WORSE))
    await rollout_log.reaches("v3", "rejected")
    assert rollout_log.statuses("v2") == ["started", "failed", "rolled_back"]


async def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    conf = settings.controller
    env = {
        **os.environ,
        "RECO_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "RECO_REDIS_URL": settings.redis.url,
        "RECO_REDIS_KEY_PREFIX": settings.redis.key_prefix,
        "RECO_CONTROLLER_NAMESPACE": conf.namespace,
        "RECO_CONTROLLER_DEPLOYMENTS": f'{{"{MODEL}": "{WORKER}"}}',
        "RECO_CONTROLLER_KUBECONFIG": str(conf.kubeconfig),
        "RECO_CONTROLLER_POLL_INTERVAL_S": "0.2",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reco_controller",
        "rollout",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(90):
        output, _ = await proc.communicate()
    return proc.returncode or 0, output.decode()


async def test_an_operator_forces_a_rejected_model_with_the_cli(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    settings: Settings,
    rollout_log: RolloutLog,
    tmp_path: Path,
) -> None:
    artifact = write_model(tmp_path, "v9", metrics=WORSE, created_at=datetime.now(UTC))

    code, output = await _cli(settings, artifact)
    assert code == 1, output
    assert output.strip().endswith("rejected")
    assert model_uri_of(await read_worker(admin, namespace)) == uri("v1")

    code, output = await _cli(settings, artifact, "--force")
    assert code == 0, output
    assert output.strip().endswith("rolled_out")
    assert model_uri_of(await settled(admin, namespace)) == artifact
    await rollout_log.reaches("v9", "succeeded")
    assert rollout_log.statuses("v9") == ["rejected", "started", "succeeded"]
    assert rollout_log.events[-2].reason.startswith("forced by an operator; gate: precision@10")


async def test_an_event_that_misstates_its_artifact_is_rejected_and_nothing_changes(
    admin: ApiClient,
    namespace: str,
    worker: Deployment,
    controller: Controller,
    send: Send,
    rollout_log: RolloutLog,
) -> None:
    """Anyone who can produce to model-published can write an event; only a pinned artifact
    whose own manifest passes the gate, dated no later than the clock skew allows, rolls out."""
    flattering = msgspec.structs.replace(published("v2", metrics=WORSE), metrics=BETTER)
    forged_pin = msgspec.structs.replace(published("v3"), manifest_sha256="0" * 64)
    unpinned = msgspec.structs.replace(published("v4"), manifest_sha256=msgspec.UNSET)
    from_the_future = published("v5", hours=24 * 365 * 100)
    for event in (flattering, forged_pin, unpinned, from_the_future):
        await send(event)  # one at a time: in one batch, the newest event per model wins
        await rollout_log.reaches(event.version, "rejected")

    reasons = {v: rollout_log.reason(v) for v in ("v2", "v3", "v4", "v5")}
    assert "50.0% below the active model's 0.2" in reasons["v2"]
    assert "not the published" in reasons["v3"]
    assert "not pinned" in reasons["v4"]
    assert "beyond the allowed clock skew" in reasons["v5"]
    after = await read_worker(admin, namespace)
    assert model_uri_of(after) == uri("v1")
    assert after.metadata.generation == worker.metadata.generation


async def test_a_patch_does_not_overwrite_a_change_it_did_not_read(
    admin: ApiClient, namespace: str, worker: Deployment, controller_kubeconfig: Path
) -> None:
    """Two controllers that both believe they lead (or an operator) cannot silently overwrite
    each other: the patch carries the resourceVersion read, the API server refuses a stale one."""
    api = await api_client(kubeconfig=controller_kubeconfig)
    try:
        target = KubernetesTarget(
            api=api,
            namespace=namespace,
            name=WORKER,
            container="worker",
            env_name=MODEL_URI_ENV,
            poll_interval_s=0.2,
        )
        state = await target.read()
        await AppsV1Api(admin).patch_namespaced_deployment(
            WORKER, namespace, {"metadata": {"annotations": {"operator": "was here"}}}
        )
        stale = ModelRef(uri=uri("v2"), version="v2")
        with pytest.raises(ApiException) as refused:
            await target.apply(model=stale, previous=state.active)
        assert refused.value.status == 409
        assert model_uri_of(await read_worker(admin, namespace)) == uri("v1")

        # What the retried batch does: read again, then patch (the Deployment controller may
        # still be writing the status after the operator's change: a conflict again, retried).
        await settled(admin, namespace)
        conflicts = []
        for _ in range(5):
            await target.read()
            try:
                await target.apply(model=stale, previous=state.active)
                break
            except ApiException as exc:
                conflicts.append(exc.status)
        assert set(conflicts) <= {409}
        assert model_uri_of(await read_worker(admin, namespace)) == uri("v2")
    finally:
        await api.close()
