"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that two replicas never act twice.

The algorithm is client-go's: a candidate takes the Lease when it does not exist, when its
holder released it (empty holder), or when the holder's record has not changed for a whole
lease duration *as observed by this candidate's own clock* (no clock comparison across hosts);
every write carries the resourceVersion it read, so that two candidates cannot both win. The
leader renews every retry period and steps down when it could not renew for the renew deadline,
which is shorter than the lease duration: it stops acting before anyone else may start.
That deadline counts from the moment the last successful write was *sent* (the first one at
acquisition, not when the consumer is up), and :meth:`LeaseElector.still_leading` checks it
before each write to a Deployment: a leader that was paused (SIGSTOP, a long GC, a hung host)
past its deadline refuses to write on waking, before its renewal loop even runs.
On a graceful stop the leader releases the Lease so that a follower takes over at once.

kubernetes_asyncio ships a ``leaderelection`` package, but it cannot release the Lease, writes
local time as UTC, and logs every lost race as an error; this module replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime
from typing import Final

import aiohttp
from kubernetes_asyncio.client import (
    ApiClient,
    CoordinationV1Api,
    V1Lease,
    V1LeaseSpec,
    V1ObjectMeta,
)
from kubernetes_asyncio.client.exceptions import ApiException

logger = logging.getLogger(__name__)

CONFLICT: Final = 409
NOT_FOUND: Final = 404


def micro_time(value: datetime | None = None) -> datetime:
    """``value`` (default: now) in UTC, fit for the API's MicroTime.

    The API parses MicroTime with exactly six fractional digits, and the client serializes with
    ``isoformat()``, which leaves the fraction out when it is zero: that one microsecond is
    nudged.
    """
    moment = (value or datetime.now(UTC)).astimezone(UTC)
    return moment if moment.microsecond else moment.replace(microsecond=1)


class LeaseElector:
    """One candidate for the Lease ``namespace/name``."""

    def __init__(
        self,
        *,
        api: ApiClient,
        name: str,
        namespace: str,
        identity: str,
        lease_duration_s: float,
        renew_deadline_s: float,
        retry_period_s: float,
    ) -> None:
        self._leases = CoordinationV1Api(api)
        self._name = name
        self._namespace = namespace
        self._identity = identity
        self._lease_duration_s = lease_duration_s
        self._renew_deadline_s = renew_deadline_s
        self._retry_period_s = retry_period_s
        self._observed: tuple[str | None, datetime | None] | None = None
        self._observed_at = 0.0
        self._leading = False
        self._valid_until = 0.0  # loop time: renew deadline after the last successful write

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def leading(self) -> bool:
        return self._leading

    def still_leading(self) -> bool:
        """Leading, and the renew deadline since the last successful write has not passed."""
        return self._leading and asyncio.get_running_loop().time() < self._valid_until

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Try every retry period until this candidate leads (``True``) or ``stop`` is set."""
        while not stop.is_set():
            if await self._attempt():
                logger.info("%s leads (lease %s/%s)", self._identity, self._namespace, self._name)
                return True
            await _sleep_unless(stop, self._retry_period_s)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew the Lease until ``stop`` is set or leadership is lost (then return at once).

        Leadership ends at the latest ``renew_deadline`` after the last successful renewal,
        whatever the API does meanwhile: no attempt and no pause runs past that deadline.
        """
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._valid_until
            pause = min(self._retry_period_s, max(0.0, deadline - loop.time()))
            if await _sleep_unless(stop, pause):
                return
            try:
                async with asyncio.timeout_at(deadline):
                    renewed = await self._attempt()
            except TimeoutError:
                renewed = False
            if renewed:
                continue
            if not self._leading:
                logger.warning("%s lost the lease to %s", self._identity, self._holder)
                return
            if loop.time() >= deadline:
                logger.error(
                    "%s could not renew the lease for %.1f s: stepping down",
                    self._identity,
                    self._renew_deadline_s,
                )
                self._leading = False
                return

    async def release(self) -> None:
        """Give the Lease up (empty holder) so that a follower takes over without waiting."""
        if not self._leading:
            return
        self._leading = False
        try:
            lease = await self._leases.read_namespaced_lease(self._name, self._namespace)
            if lease.spec.holder_identity != self._identity:
                return
            now = micro_time()
            released = V1LeaseSpec(
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=lease.spec.lease_transitions,
            )
            await self._leases.replace_namespaced_lease(
                self._name, self._namespace, self._guarded(lease, released)
            )
            logger.info("%s released the lease", self._identity)
        except (ApiException, aiohttp.ClientError) as exc:
            logger.warning(
                "%s could not release the lease (it will expire): %s", self._identity, exc
            )

    @property
    def _holder(self) -> str | None:
        return self._observed[0] if self._observed else None

    async def _attempt(self) -> bool:
        """One read-and-write; ``True`` when this candidate holds the Lease afterwards."""
        try:
            return await self._acquire_or_renew()
        except ApiException as exc:
            if exc.status != CONFLICT:  # a conflict only means another candidate wrote first
                logger.warning(
                    "lease %s/%s: %s %s", self._namespace, self._name, exc.status, exc.reason
                )
        except aiohttp.ClientError as exc:
            logger.warning("lease %s/%s: API unreachable: %s", self._namespace, self._name, exc)
        return False

    async def _acquire_or_renew(self) -> bool:
        now = asyncio.get_running_loop().time()
        try:
            lease = await self._leases.read_namespaced_lease(self._name, self._namespace)
        except ApiException as exc:
            if exc.status == NOT_FOUND:
                return await self._create()
            raise
        spec = lease.spec
        holder = spec.holder_identity or None
        record = (holder, spec.renew_time)
        if record != self._observed:
            self._observed, self._observed_at = record, now
        if holder not in (None, self._identity):
            duration = spec.lease_duration_seconds or self._lease_duration_s
            if now < self._observed_at + duration:
                self._leading = False
                return False
            logger.info("the lease of %s expired: %s takes over", holder, self._identity)
        await self._leases.replace_namespaced_lease(
            self._name, self._namespace, self._guarded(lease, self._renewed(lease.spec))
        )
        self._won(since=now)
        return True

    def _won(self, *, since: float) -> None:
        """This candidate holds the Lease: valid for the renew deadline from ``since``, a loop
        time taken before the write was sent (never later than the API server's view)."""
        self._leading = True
        self._valid_until = since + self._renew_deadline_s

    async def _create(self) -> bool:
        sent = asyncio.get_running_loop().time()
        now = micro_time()
        spec = V1LeaseSpec(
            holder_identity=self._identity,
            lease_duration_seconds=math.ceil(self._lease_duration_s),
            acquire_time=now,
            renew_time=now,
            lease_transitions=0,
        )
        body = V1Lease(metadata=V1ObjectMeta(name=self._name, namespace=self._namespace), spec=spec)
        await self._leases.create_namespaced_lease(self._namespace, body)
        self._won(since=sent)
        return True

    def _renewed(self, spec: V1LeaseSpec) -> V1LeaseSpec:
        now = micro_time()
        taking_over = spec.holder_identity != self._identity
        return V1LeaseSpec(
            holder_identity=self._identity,
            lease_duration_seconds=math.ceil(self._lease_duration_s),
            acquire_time=now
            if taking_over or spec.acquire_time is None
            else micro_time(spec.acquire_time),
            renew_time=now,
            lease_transitions=(spec.lease_transitions or 0) + int(taking_over),
        )

    def _guarded(self, lease: V1Lease, spec: V1LeaseSpec) -> V1Lease:
        """A full Lease for ``replace``, refused (409) if the Lease changed since it was read."""
        meta = V1ObjectMeta(
            name=self._name,
            namespace=self._namespace,
            resource_version=lease.metadata.resource_version,
        )
        return V1Lease(metadata=meta, spec=spec)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stop`` is set; ``True`` when stopped."""
    try:
        async with asyncio.timeout(seconds):
            await stop.wait()
    except TimeoutError:
        return False
    return True


class AlwaysLeader:
    """The ``local`` target's stand-in: one controller process, nothing to elect."""

    identity: Final = "local"
    leading: Final = True

    def still_leading(self) -> bool:
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        return not stop.is_set()

    async def hold(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def release(self) -> None:
        return None
