"""The Lease elector against the real API server: exclusion, release, expiry, loss."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from controller_kube import Kube
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, V1Lease

from reco_controller.kube import api_client
from reco_controller.leader import LeaseElector

LEASE = "reco-controller"


def _elector(
    admin: ApiClient, namespace: str, identity: str, *, lease_duration_s: float = 2
) -> LeaseElector:
    return LeaseElector(
        api=admin,
        name=LEASE,
        namespace=namespace,
        identity=identity,
        lease_duration_s=lease_duration_s,
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


class CuttableProxy:
    """A TCP proxy to the API server on 127.0.0.1 that can be cut, like a network partition."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._tasks.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def test_a_leader_cut_off_from_the_api_steps_down_before_anyone_takes_over(
    admin: ApiClient, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    config = yaml.safe_load(kube.kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    proxy = CuttableProxy(server.port or 443)
    await proxy.start()
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    proxied = tmp_path / "proxied.kubeconfig"
    proxied.write_text(yaml.safe_dump(config))
    cut_off_api = await api_client(kubeconfig=proxied)
    try:
        # b may take over 3 s after a's last renewal, a must stop leading 1.5 s after it.
        a = _elector(cut_off_api, namespace, "a", lease_duration_s=3)
        b = _elector(admin, namespace, "b", lease_duration_s=3)
        stop = asyncio.Event()
        assert await a.acquire(stop)
        holding = asyncio.create_task(a.hold(stop))
        b_acquires = asyncio.create_task(b.acquire(stop))

        await proxy.cut()
        async with asyncio.timeout(30):
            await holding
        assert not a.leading
        assert not b_acquires.done(), "a stepped down before b could take over"
        async with asyncio.timeout(30):
            assert await b_acquires
        assert (await _lease(admin, namespace)).spec.holder_identity == "b"
    finally:
        await cut_off_api.close()


async def test_a_leader_whose_renewals_stopped_may_not_write_once_its_deadline_passed(
    admin: ApiClient, namespace: str
) -> None:
    """What a SIGSTOP does to a leader: nothing renews, yet on waking ``leading`` is still set.
    The write check counts the renew deadline from the last successful write (here the
    acquisition: no consumer start or other work extends it) and refuses once it passed,
    while a follower may take over one lease duration after the last renewal."""
    a, b = _elector(admin, namespace, "a"), _elector(admin, namespace, "b")
    stop = asyncio.Event()
    assert await a.acquire(stop)
    assert a.still_leading()
    await asyncio.sleep(1.6)  # past renew_deadline_s (1.5), with no renewal: "paused"
    assert a.leading, "its renewal loop has not run: the flag alone would still say yes"
    assert not a.still_leading()
    async with asyncio.timeout(30):
        assert await b.acquire(stop)  # the follower takes over after the lease duration
    assert not a.still_leading()
