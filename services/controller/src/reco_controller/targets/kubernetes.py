"""The ``kubernetes`` target: roll a worker Deployment to a model by patching its env.

A strategic merge patch sets ``MODEL_URI`` in the worker container (the other env vars and
containers are untouched) and records the model in ``reco.dev/*`` annotations; the Deployment
controller then performs the rolling update, which :func:`rollout_progress` follows the way
``kubectl rollout status`` does. Going back is the same patch with the previous URI, so the
old ReplicaSet, whose pod template matches again, is scaled back up.

Every patch carries the ``resourceVersion`` of the Deployment as last read: a change made by
anyone else in between (another controller that also believes it leads, an operator) makes the
API server refuse the patch with 409 Conflict, and the batch is retried from a fresh read
instead of overwriting what it did not see.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from kubernetes_asyncio.client import ApiClient, AppsV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from reco_common.contracts import ModelRef
from reco_common.redis_store import Epoch
from reco_controller.settings import ControllerSettings
from reco_controller.targets.base import Progress, TargetError, TargetState
from reco_controller.targets.deployment import (
    ACTIVE,
    FAILED_URI,
    PREVIOUS,
    Deployment,
    annotation,
    revert_patch,
    rollout_patch,
)
from reco_controller.targets.rollout_status import rollout_progress

logger = logging.getLogger(__name__)

# Refusals that retrying cannot fix: a bad request, RBAC, a missing Deployment, an invalid patch.
PERMANENT_STATUSES: Final = frozenset({400, 401, 403, 404, 422})


class KubernetesTarget:
    """One worker Deployment, addressed by namespace and name."""

    kind: Final = "kubernetes"

    def __init__(
        self,
        *,
        api: ApiClient,
        namespace: str,
        name: str,
        container: str,
        env_name: str,
        poll_interval_s: float,
    ) -> None:
        self._api = api
        self._apps = AppsV1Api(api)
        self._namespace = namespace
        self._name = name
        self._container = container
        self._env_name = env_name
        self._poll_interval_s = poll_interval_s
        self._read_version: str | None = None  # resourceVersion of the last read

    @property
    def description(self) -> str:
        return f"deployment {self._namespace}/{self._name}"

    async def read(self) -> TargetState:
        deployment = await self._get()
        notes = deployment.metadata.annotations
        uri = deployment.container(self._container).env_value(self._env_name)
        return TargetState(
            active=deployment.record(ACTIVE, uri),
            previous=deployment.record(PREVIOUS, notes.get(annotation(PREVIOUS, "uri"))),
            failed_uri=notes.get(FAILED_URI),
            settled=rollout_progress(deployment).done,
            # A Deployment deleted and created again starts a new lineage at generation 1.
            epoch=Epoch(deployment.metadata.uid, deployment.metadata.generation),
        )

    async def apply(self, *, model: ModelRef, previous: ModelRef | None) -> None:
        await self._patch(
            rollout_patch(
                container=self._container,
                env_name=self._env_name,
                model=model,
                previous=previous,
            )
        )

    async def revert(self, *, failed: ModelRef, previous: ModelRef | None) -> None:
        await self._patch(
            revert_patch(
                container=self._container,
                env_name=self._env_name,
                failed=failed,
                previous=previous,
            )
        )

    async def wait(self, *, timeout_s: float) -> Progress:
        progress = Progress.waiting("not read yet")
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    progress = rollout_progress(await self._get())
                    if progress.done or progress.failed:
                        return progress
                    logger.debug("%s: %s", self.description, progress.message)
                    await asyncio.sleep(self._poll_interval_s)
        except TimeoutError:
            return Progress.failure(f"not rolled out after {timeout_s:g} s: {progress.message}")

    async def _get(self) -> Deployment:
        try:
            found = await self._apps.read_namespaced_deployment(self._name, self._namespace)
        except ApiException as exc:
            self._raise_if_permanent("read", exc)
            raise
        deployment = Deployment.parse(self._api.sanitize_for_serialization(found))
        self._read_version = deployment.metadata.resource_version
        return deployment

    async def _patch(self, body: dict[str, Any]) -> None:
        """A dict body is sent as a strategic merge patch (the client's choice for PATCH + dict),
        conditional on the ``resourceVersion`` last read (409 Conflict if it changed)."""
        if self._read_version is not None:
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": self._read_version}}
        try:
            patched = await self._apps.patch_namespaced_deployment(
                self._name, self._namespace, body
            )
        except ApiException as exc:
            self._raise_if_permanent("patch", exc)
            raise
        self._read_version = patched.metadata.resource_version  # our own write is seen
        logger.info("patched %s to generation %s", self.description, patched.metadata.generation)

    def _raise_if_permanent(self, verb: str, exc: ApiException) -> None:
        """Permanent refusals become :class:`TargetError`; the rest propagate and are retried."""
        if exc.status in PERMANENT_STATUSES:
            raise TargetError(
                f"{verb} {self.description}: {exc.status} {exc.reason}: {_message(exc)}"
            ) from exc


def _message(exc: ApiException) -> str:
    """The API's own explanation (the Status object's message), else the raw body."""
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body)
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:500]


class KubernetesTargets:
    """Resolves a model name to its worker Deployment (``RECO_CONTROLLER_DEPLOYMENTS``)."""

    def __init__(self, *, api: ApiClient, settings: ControllerSettings) -> None:
        self._targets = {
            model: KubernetesTarget(
                api=api,
                namespace=settings.namespace,
                name=deployment,
                container=settings.container,
                env_name=settings.model_uri_env,
                poll_interval_s=settings.poll_interval_s,
            )
            for model, deployment in settings.deployments.items()
        }

    def __call__(self, model_name: str) -> KubernetesTarget | None:
        return self._targets.get(model_name)

    def managed(self) -> Mapping[str, KubernetesTarget]:
        return self._targets
