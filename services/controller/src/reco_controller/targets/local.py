"""The ``local`` target: workers running as plain processes (docker-compose, the local demo).

There is no Deployment to remember anything, so the target keeps what a Deployment keeps in its
env and annotations (the model the workers were told to run, the one before it, the last one
rolled back) in Redis, under the model's ``rollout`` key, as a :class:`LocalRollout` whose
``epoch`` fences the ``active`` record: Redis is the durable store this deployment already runs
(append-only file), and the state survives a restart of the controller, so that a failed model
is not retried and an interrupted rollout is resumed (or rolled back) by the next run. The
workers' own reports (``GET /v1/model``) tell whether they all run it. Without a stored state
(the first run, or Redis lost its data) what the workers report is taken as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

import httpx
import msgspec

from reco_common.artifact import ArtifactError
from reco_common.contracts import ContractError, LocalRollout, ModelRef, WorkerModelState
from reco_common.redis_store import Epoch
from reco_common.settings import S3Settings
from reco_controller import manifests
from reco_controller.settings import ControllerSettings
from reco_controller.targets.base import Progress, TargetError, TargetState
from reco_controller.targets.worker_client import ModelControlClient, refused

logger = logging.getLogger(__name__)

# A worker that refuses our credentials or has no model-control endpoint: configuration.
PERMANENT_STATUSES: Final = frozenset({401, 403, 404, 405})
# The lineage of the local target's epochs (a Deployment's is its uid).
LINEAGE: Final = "local"


class RolloutMemory(Protocol):
    """Where the state is kept (:class:`reco_common.redis_store.ModelRecords`)."""

    async def rollout(self, model_name: str) -> LocalRollout | None: ...

    async def remember_rollout(
        self, model_name: str, state: LocalRollout, *, lineage: str
    ) -> bool: ...


class LocalTarget:
    """The worker processes serving one model."""

    kind: Final = "local"

    def __init__(
        self,
        *,
        model_name: str,
        workers: Sequence[ModelControlClient],
        s3: S3Settings,
        records: RolloutMemory,
        poll_interval_s: float,
    ) -> None:
        self._model_name = model_name
        self._workers = list(workers)
        self._s3 = s3
        self._records = records
        self._poll_interval_s = poll_interval_s
        self._applied: str | None = None
        self._refusals: list[str] = []

    @property
    def description(self) -> str:
        return f"{len(self._workers)} local workers of {self._model_name!r}"

    async def read(self) -> TargetState:
        saved = await self._saved()
        reports = await self._reports()
        desired = saved.desired
        if desired is None:
            first = reports[0]
            desired = (
                await self._describe(first.model_uri, first.version) if first.model_uri else None
            )
            settled = len({r.model_uri for r in reports}) == 1
        else:
            settled = all(r.model_uri == desired.uri for r in reports)
        return TargetState(
            active=desired,
            previous=saved.previous,
            failed_uri=saved.failed_uri,
            settled=settled,
            epoch=Epoch(LINEAGE, saved.epoch),
        )

    async def apply(self, *, model: ModelRef, previous: ModelRef | None) -> None:
        saved = await self._saved()
        await self._remember(
            LocalRollout(
                desired=model,
                previous=previous if previous else None,
                failed_uri=saved.failed_uri,
                epoch=saved.epoch + 1,
            )
        )
        await self._load_everywhere(model)

    async def revert(self, *, failed: ModelRef, previous: ModelRef | None) -> None:
        if previous is None:
            raise TargetError(f"{self.description}: no previous model to go back to")
        saved = await self._saved()
        await self._remember(
            LocalRollout(desired=previous, failed_uri=failed.uri, epoch=saved.epoch + 1)
        )
        await self._load_everywhere(previous)

    async def _saved(self) -> LocalRollout:
        try:
            saved = await self._records.rollout(self._model_name)
        except ContractError as exc:
            logger.error("%s: unreadable rollout state, starting afresh: %s", self.description, exc)
            saved = None
        return saved or LocalRollout()

    async def _remember(self, state: LocalRollout) -> None:
        """Store the state before the workers are told (a crash in between resumes it)."""
        if not await self._records.remember_rollout(self._model_name, state, lineage=LINEAGE):
            raise TargetError(f"{self.description}: a newer rollout state was stored meanwhile")

    async def wait(self, *, timeout_s: float) -> Progress:
        if self._refusals:
            return Progress.failure("; ".join(self._refusals))
        progress = Progress.waiting("not asked yet")
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    # First a poll interval: right after the requests nothing can be done yet.
                    await asyncio.sleep(self._poll_interval_s)
                    progress = self._progress(await self._reports())
                    if progress.done or progress.failed:
                        return progress
        except TimeoutError:
            return Progress.failure(f"not rolled out after {timeout_s:g} s: {progress.message}")

    def _progress(self, reports: Sequence[WorkerModelState]) -> Progress:
        assert self._applied is not None, "apply() first"
        failed = [
            f"{worker.url}: {why}"
            for worker, report in zip(self._workers, reports, strict=True)
            if (why := refused(report, self._applied)) is not None
        ]
        if failed:
            return Progress.failure("; ".join(failed))
        lagging = [r for r in reports if r.model_uri != self._applied]
        if lagging:
            return Progress.waiting(
                f"{len(lagging)} of {len(reports)} workers not serving {self._applied} yet"
            )
        return Progress.complete(f"all {len(reports)} workers serve {self._applied}")

    async def _load_everywhere(self, model: ModelRef) -> None:
        self._applied = model.uri
        self._refusals = []
        await asyncio.gather(*(self._load(worker, model) for worker in self._workers))

    async def _load(self, worker: ModelControlClient, model: ModelRef) -> None:
        uri = model.uri
        try:
            await worker.load(uri, manifest_sha256=model.manifest_sha256)
        except httpx.HTTPStatusError as exc:
            self._raise_if_permanent(worker, exc)
            reason = (
                f"{worker.url} refused {uri}: {exc.response.status_code} {exc.response.text[:300]}"
            )
            logger.warning("%s", reason)
            self._refusals.append(reason)

    async def _reports(self) -> list[WorkerModelState]:
        try:
            return list(await asyncio.gather(*(w.current() for w in self._workers)))
        except httpx.HTTPStatusError as exc:
            self._raise_if_permanent(None, exc)
            raise

    def _raise_if_permanent(
        self, worker: ModelControlClient | None, exc: httpx.HTTPStatusError
    ) -> None:
        if exc.response.status_code in PERMANENT_STATUSES:
            where = worker.url if worker else exc.request.url
            raise TargetError(
                f"{where}: {exc.response.status_code} {exc.response.reason_phrase}"
            ) from exc

    async def _describe(self, uri: str, version: str | None) -> ModelRef:
        """The active model with the metrics of its manifest (without them when unreadable),
        pinned to the manifest's bytes as read now: a model the workers were started on outside a
        rollout has no announced pin, and workers refuse an unpinned load of a model they do not
        serve, so without this pin a rollback to it would be refused (manifests are write-once)."""
        try:
            event = await manifests.published(uri, s3=self._s3)
        except (ArtifactError, ContractError, ValueError) as exc:
            logger.warning("active model %s has no readable manifest: %s", uri, exc)
            return ModelRef(uri=uri, version=version)
        return msgspec.structs.replace(
            ModelRef.of(event), uri=uri
        )  # the URI as the workers report it


class LocalTargets:
    """Resolves a model name to its workers (``RECO_CONTROLLER_WORKER_URLS``)."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        settings: ControllerSettings,
        s3: S3Settings,
        records: RolloutMemory,
    ) -> None:
        self._targets = {
            model: LocalTarget(
                model_name=model,
                workers=[ModelControlClient(http=http, base_url=str(url)) for url in urls],
                s3=s3,
                records=records,
                poll_interval_s=settings.poll_interval_s,
            )
            for model, urls in settings.worker_urls.items()
        }

    def __call__(self, model_name: str) -> LocalTarget | None:
        return self._targets.get(model_name)

    def managed(self) -> Mapping[str, LocalTarget]:
        return self._targets


def worker_http(settings: ControllerSettings) -> httpx.AsyncClient:
    """One HTTP client for every worker, carrying the model-control bearer token."""
    return httpx.AsyncClient(
        headers={"Authorization": f"Bearer {settings.worker_token.get_secret_value()}"},
        timeout=settings.worker_timeout_s,
    )
