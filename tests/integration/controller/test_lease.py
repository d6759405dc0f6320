"""The Lease elector against the real API server: exclusion, release, expiry, loss."""

from __future__ import annotations

import asyncio

from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, V1Lease

from reco_controller.leader import LeaseElector

LEASE = "reco-controller"


def _elector(admin: ApiClient, namespace: str, identity: str) -> LeaseElector:
    return LeaseElector(
        api=admin,
        name=LEASE,
        namespace=namespace,
        identity=identity,
        lease_duration_s=2,
        renew_deadline_s=1.5,
        retry_period_s=0.2,
    )


async def _lease(admin: ApiClient, namespace: str) -> V1Lease:
    return await CoordinationV1Api(admin).read_namespaced_lease(LEASE, namespace)


async def test_two_candidates_racing_for_a_new_lease_one_wins(
    admin: ApiClient, namespace: str
) -> None:
    a, b = _elector(admin, namespace, "a"), _elector(admin, namespace, "b")
    stop = asyncio.Event()
    tasks = {asyncio.create_task(e.acquire(stop)): e for e in (a, b)}
    async with asyncio.timeout(30):
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    (winner,) = (tasks[t] for t in done)
    stop.set()
    (loser_task,) = pending
    assert await loser_task is False
    assert not tasks[loser_task].leading
    assert winner.leading
    assert (await _lease(admin, namespace)).spec.holder_identity == winner.identity


async def test_release_hands_over_and_expiry_lets_a_candidate_take_over(
    admin: ApiClient, namespace: str
) -> None:
    a, b = _elector(admin, namespace, "a"), _elector(admin, namespace, "b")
    stop = asyncio.Event()
    assert await a.acquire(stop)
    b_acquires = asyncio.create_task(b.acquire(stop))

    await a.release()  # the graceful path: b need not wait for the lease to expire
    async with asyncio.timeout(30):
        assert await b_acquires
    lease = await _lease(admin, namespace)
    assert (lease.spec.holder_identity, lease.spec.lease_transitions) == ("b", 1)

    # b stops renewing (as if killed): a takes over once the lease duration passed unchanged.
    async with asyncio.timeout(30):
        assert await a.acquire(stop)
    lease = await _lease(admin, namespace)
    assert (lease.spec.holder_identity, lease.spec.lease_transitions) == ("a", 2)


async def test_a_leader_that_finds_another_holder_steps_down(
    admin: ApiClient, namespace: str
) -> None:
    a = _elector(admin, namespace, "a")
    stop = asyncio.Event()
    assert await a.acquire(stop)
    holding = asyncio.create_task(a.hold(stop))

    lease = await _lease(admin, namespace)
    lease.spec.holder_identity = "intruder"  # e.g. a partition made a's lease expire elsewhere
    await CoordinationV1Api(admin).replace_namespaced_lease(LEASE, namespace, lease)

    async with asyncio.timeout(30):
        await holding
    assert not a.leading
    stop.set()


async def test_holding_renews_so_no_other_candidate_gets_in(
    admin: ApiClient, namespace: str
) -> None:
    a, b = _elector(admin, namespace, "a"), _elector(admin, namespace, "b")
    stop, b_stop = asyncio.Event(), asyncio.Event()
    assert await a.acquire(stop)
    holding = asyncio.create_task(a.hold(stop))
    b_acquires = asyncio.create_task(b.acquire(b_stop))
    renewals = set()
    async with asyncio.timeout(30):
        # 15 renewals, 0.2 s apart: longer than the 2 s lease, which would have expired unrenewed.
        while len(renewals) < 15:
            renewals.add((await _lease(admin, namespace)).spec.renew_time)
            await asyncio.sleep(0.1)
    assert not b_acquires.done()
    assert a.leading
    stop.set()
    await holding
    await a.release()
    async with asyncio.timeout(30):
        assert await b_acquires
