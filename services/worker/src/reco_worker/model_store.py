"""The model in memory: loading and verifying artifacts, and the atomic swap.

A model is only ever swapped in whole: the artifact is downloaded, its checksums and values
verified (once per cache directory: reco_common.artifact), its arrays mapped in a thread, and
only then does one reference assignment make it current. A load that fails at any step leaves the current model in place and is
reported by :meth:`status`.

The worker does not write the model's ``active`` record (the API's fallback and
``model_version``): one worker loading a model says nothing about the rollout, which may still
fail and be rolled back. The controller writes it once the rollout has succeeded
(``reco_controller.activation``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_result, wait_exponential

from reco_common.artifact import ArtifactError
from reco_common.artifact_cache import load_artifact
from reco_common.contracts import MODEL_CONTROL_PATH, MODEL_URI_ENV
from reco_common.id_lookup import IdLookupError
from reco_common.settings import S3Settings
from reco_common.storage import as_uri, open_store
from reco_worker.metrics import WorkerMetrics
from reco_worker.scoring import ServingModel
from reco_worker.topn import IndexUse

logger = logging.getLogger(__name__)


def _freeze_survivors() -> float:
    """Collect the garbage, then move every object alive (the model's id maps, the imported
    modules, the clients) out of the collector's sight (``gc.freeze``); returns the seconds it
    took. The collector's full passes then scan only what batches allocated since: at 10k items
    and 100k users a full pass over them all paused the event loop for 70-175 ms every ~15 s at
    1,000 events/s, the worst freshness of the window. What the previous swap froze is unfrozen
    first, so that the collection also sees the replaced model: frozen objects are freed when
    their last reference goes, but a reference cycle among them would never be."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


class ModelRefusedError(RuntimeError):
    """A model that must not be served (missing, corrupt, or another model's name)."""


def load_serving_model(
    uri: str,
    *,
    s3: S3Settings,
    cache_dir: Path,
    manifest_sha256: str | None = None,
    index_use: IndexUse | None = None,
) -> ServingModel:
    """Download, verify and load the artifact at ``uri`` (blocking: call it in a thread);
    with ``manifest_sha256`` (the pin of its announcement) only if its manifest matches.
    ``index_use``: when the artifact's approximate index serves (default: :class:`IndexUse`).

    The model keeps ``uri`` as given: it is how callers of ``/v1/model`` recognise it.
    """
    try:
        store = open_store(as_uri(uri), s3=s3)
        loaded = load_artifact(store, cache_dir=cache_dir, manifest_sha256=manifest_sha256)
    except (ArtifactError, OSError, ValueError) as exc:
        raise ModelRefusedError(f"{uri}: {exc}") from exc
    arrays, manifest = loaded.arrays, loaded.manifest
    if not arrays.item_ids:
        raise ModelRefusedError(f"{uri}: the model has no items")
    if arrays.item_factors.shape[1] != manifest.dim + 1:
        raise ModelRefusedError(f"{uri}: factors are not [n, dim + 1] for dim {manifest.dim}")
    try:
        return ServingModel(
            name=manifest.model_name,
            version=manifest.version,
            uri=uri,
            arrays=arrays,
            index_use=index_use,
        )
    except IdLookupError as exc:  # an artifact without lookups, whose ids cannot have one
        raise ModelRefusedError(f"{uri}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LoadFailure:
    uri: str
    error: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ModelStatus:
    active: ServingModel | None
    activated_at: datetime | None
    loading: str | None
    last_error: LoadFailure | None


class ModelStore:
    """Owns the model in memory; :attr:`loaded` is set once a model is current."""

    def __init__(
        self,
        *,
        s3: S3Settings,
        cache_dir: Path,
        metrics: WorkerMetrics,
        index_use: IndexUse | None = None,
    ) -> None:
        self._s3 = s3
        self._cache_dir = cache_dir
        self._index_use = index_use
        self._metrics = metrics
        self._current: ServingModel | None = None
        self._activated_at: datetime | None = None
        self._last_error: LoadFailure | None = None
        self._loading: tuple[str, asyncio.Task[None]] | None = None
        self._queued: str | None = None
        self._wanted: str | None = None  # the latest model asked for over HTTP
        self._swap = asyncio.Lock()
        self._pins: dict[str, str] = {}
        self.loaded = asyncio.Event()

    def pin(self, uri: str, manifest_sha256: str) -> None:
        """Load ``uri`` only if its manifest's bytes hash to ``manifest_sha256`` from now on."""
        self._pins[uri] = manifest_sha256

    @property
    def current(self) -> ServingModel:
        if self._current is None:
            raise RuntimeError("no model is loaded yet")
        return self._current

    def status(self) -> ModelStatus:
        loading = self._queued or (self._loading[0] if self._loading else None)
        return ModelStatus(self._current, self._activated_at, loading, self._last_error)

    async def load(self, uri: str, *, first: bool = False) -> ServingModel:
        """Load, verify and swap in the model at ``uri``; raise if it is refused.

        ``first``: only if no model is current yet (a model posted meanwhile wins).
        """
        try:
            model = await asyncio.to_thread(
                load_serving_model,
                uri,
                s3=self._s3,
                cache_dir=self._cache_dir,
                manifest_sha256=self._pins.get(uri),
                index_use=self._index_use,
            )
            async with self._swap:
                if first and self._current is not None:
                    return self._current
                if self._superseded(uri) and self._current is not None:
                    logger.info("model %s loaded, but %s was asked for since", uri, self._wanted)
                    return self._current
                self._check_name(model)
                self._swap_in(model)
        except Exception as exc:
            self._metrics.model_loads.labels("refused").inc()
            self._last_error = LoadFailure(uri, str(exc), datetime.now(UTC))
            raise
        self._metrics.model_loads.labels("loaded").inc()
        return model

    def _check_name(self, model: ServingModel) -> None:
        if self._current is not None and model.name != self._current.name:
            raise ModelRefusedError(
                f"{model.uri}: model {model.name!r} is not {self._current.name!r}; "
                "a worker serves one model name (start another worker for it)"
            )

    def _swap_in(self, model: ServingModel) -> None:
        old, self._current = self._current, model
        self._activated_at = datetime.now(UTC)
        if old is not None:
            self._metrics.model_info.remove(old.name, old.version)
        self._metrics.model_info.labels(model.name, model.version).set(1)
        self._metrics.index_probes.set(model.selector.probes)
        self._last_error = None
        del old
        frozen_s = _freeze_survivors()
        self.loaded.set()
        logger.info(
            "serving model %s version %s (%d items%s) from %s (garbage collected and the rest "
            "frozen in %.3f s)",
            model.name,
            model.version,
            model.n_items,
            f", {model.selector.probes} index partitions searched per user"
            if model.selector.probes
            else "",
            model.uri,
            frozen_s,
        )

    def _superseded(self, uri: str) -> bool:
        return self._wanted is not None and self._wanted != uri

    def request(self, uri: str, *, manifest_sha256: str | None = None) -> None:
        """Load ``uri`` in the background (pinned to ``manifest_sha256`` when given); while a
        load runs, the latest request waits its turn. The latest request wins: asking for the
        model already served (a rollback while the rolled-back model still loads) drops what
        was queued, and a load in progress of another model is not swapped in when done."""
        if manifest_sha256 is not None:
            self.pin(uri, manifest_sha256)
        self._wanted = uri
        if self._current is not None and self._current.uri == uri:
            self._queued = None
            return
        if self._loading is None:
            self._start(uri, first=False)
        else:
            self._queued = uri

    def _start(self, uri: str, *, first: bool) -> None:
        task = asyncio.create_task(self._load_in_background(uri, first=first), name=f"load {uri}")
        self._loading = (uri, task)

    async def _load_in_background(self, uri: str, *, first: bool) -> None:
        try:
            await self.load(uri, first=first)
        except Exception as exc:
            if self._current is None:
                logger.error("model %s refused, the worker stays not ready: %s", uri, exc)
            else:
                logger.error(
                    "model %s refused, keeping version %s: %s", uri, self._current.version, exc
                )
        finally:
            self._loading = None
            queued, self._queued = self._queued, None
            if queued is not None:
                self._start(queued, first=False)

    async def load_first(self, uri: str | None, *, stop: asyncio.Event, retry_max_s: float) -> bool:
        """Load the configured model, retrying with backoff; ``False`` if stopped before.

        Without ``uri`` (or while it keeps failing) a model posted to ``/v1/model`` also counts.
        """
        if uri is None:
            logger.error(
                "%s is not set: not ready until a model is posted to %s",
                MODEL_URI_ENV,
                MODEL_CONTROL_PATH,
            )

        async def settled() -> bool:
            if uri is not None and self._loading is None and not self.loaded.is_set():
                self._start(uri, first=True)
            return self.loaded.is_set() or stop.is_set()

        retrying = AsyncRetrying(
            wait=wait_exponential(multiplier=1, max=retry_max_s),
            retry=retry_if_result(lambda done: not done),
            sleep=lambda seconds: _first_of(self.loaded, stop, timeout_s=seconds),
        )
        await retrying(settled)
        return self.loaded.is_set()

    async def close(self) -> None:
        self._queued = None
        if self._loading is not None:
            task = self._loading[1]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _first_of(*events: asyncio.Event, timeout_s: float) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
