"""The ``active`` record of each model: what the API serves as the fallback and names as the
``model_version``, switched by the controller alone.

The record follows the target, never a single worker: it is written once the target is
*settled* on a model (every worker runs it), which is after a rollout succeeded or after a
rollback settled, never while a rollout is in flight. Its popular list comes from the artifact,
read from object storage and verified (the manifest against the pin the target recorded, the
list against the manifest's checksum). Each write carries the target's epoch and Redis refuses
an older one (:class:`reco_common.redis_store.ModelRecords`), so a writer that read the target
before a newer rollout cannot switch the record back.

Besides the rollouts, the leader keeps the record in line every few seconds (:meth:`keep`):
after Redis lost its data, on a fresh install whose workers were started on a model, after a
restart that interrupted a rollout the Deployment then finished alone. A model whose rollout
this process is carrying out is left to that rollout (one lock per model).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from reco_common.artifact import ArtifactError, Manifest, PopularList
from reco_common.contracts import ActiveModel, ContractError, ModelRef
from reco_common.redis_store import Epoch
from reco_controller.metrics import ControllerMetrics
from reco_controller.targets.base import RolloutTarget, TargetResolver, TargetState

logger = logging.getLogger(__name__)


class PopularSource(Protocol):
    """The manifest and the popular list of the artifact at ``uri``, the manifest checked
    against ``sha256`` when known (``ArtifactError`` when anything does not match)."""

    async def __call__(self, uri: str, *, sha256: str | None) -> tuple[Manifest, PopularList]: ...


class ActiveRecords(Protocol):
    """Where the records are (:class:`reco_common.redis_store.ModelRecords`)."""

    async def active(self, model_name: str) -> ActiveModel | None: ...

    async def activate(self, active: ActiveModel, *, epoch: Epoch) -> bool: ...


class Activations:
    """Writes each model's ``active`` record from its target's state."""

    def __init__(
        self, *, records: ActiveRecords, popular: PopularSource, metrics: ControllerMetrics
    ) -> None:
        self._records = records
        self._popular = popular
        self._metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, model_name: str) -> asyncio.Lock:
        """Held while this process rolls the model out (the keeper leaves it alone then)."""
        return self._locks.setdefault(model_name, asyncio.Lock())

    async def settle(self, model_name: str, state: TargetState) -> bool:
        """Point the model's ``active`` record at what the target is settled on; ``True`` if
        it was switched (nothing to do while a rollout is in flight or the record is right)."""
        active = state.active
        if not state.settled or active is None:
            return False
        if await self._recorded_uri(model_name) == active.uri:
            return False
        record = await self._record(model_name, active)
        if not await self._records.activate(record, epoch=state.epoch):
            logger.info("%s: a newer activation than %s was written", model_name, active.uri)
            self._metrics.activations.labels("stale").inc()
            return False
        logger.info("%s: active model is now %s (%s)", model_name, record.version, active.uri)
        self._metrics.activations.labels("switched").inc()
        return True

    async def _recorded_uri(self, model_name: str) -> str | None:
        try:
            current = await self._records.active(model_name)
        except ContractError as exc:
            logger.error("%s: unreadable active record, rewriting it: %s", model_name, exc)
            return None
        return current.artifact_uri if current else None

    async def _record(self, model_name: str, active: ModelRef) -> ActiveModel:
        if active.manifest_sha256 is None:
            logger.warning(
                "%s: no pin recorded for %s: its manifest is read unpinned", model_name, active.uri
            )
        manifest, popular = await self._popular(active.uri, sha256=active.manifest_sha256)
        if manifest.model_name != model_name:
            raise ArtifactError(
                f"{active.uri} is model {manifest.model_name!r}, not {model_name!r}"
            )
        return ActiveModel(
            model_name=model_name,
            version=manifest.version,
            artifact_uri=active.uri,
            activated_at=datetime.now(UTC),
            popular_items=popular.items,
            popular_scores=popular.scores,
        )

    async def keep(
        self,
        targets: TargetResolver,
        *,
        leading: Callable[[], bool],
        interval_s: float,
        stop: asyncio.Event,
    ) -> None:
        """Every ``interval_s`` while leading: each settled target's record in line."""
        while not stop.is_set() and leading():
            for model_name, target in targets.managed().items():
                lock = self.lock(model_name)
                if lock.locked() or not leading():
                    continue
                async with lock:
                    await self._keep_one(model_name, target)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                continue

    async def _keep_one(self, model_name: str, target: RolloutTarget) -> None:
        try:
            state = await target.read()
        except Exception as exc:
            self._metrics.activations.labels("failed").inc()
            logger.warning(
                "%s: could not be read to check its active record: %r", target.description, exc
            )
            return
        await self.try_settle(model_name, state, where=target.description)

    async def try_settle(self, model_name: str, state: TargetState, *, where: str) -> bool:
        """:meth:`settle`, any failure (Redis, object storage, a refused artifact) logged and
        counted instead of raised: the rollout goes on, the next check of :meth:`keep` tries
        again."""
        try:
            return await self.settle(model_name, state)
        except Exception as exc:
            self._metrics.activations.labels("failed").inc()
            logger.error("%s: the active record could not be written (retried): %r", where, exc)
            return False
