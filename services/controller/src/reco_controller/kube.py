"""The Kubernetes API client: the pod's service account, or a kubeconfig file."""

from __future__ import annotations

import logging
from pathlib import Path

from kubernetes_asyncio import config
from kubernetes_asyncio.client import ApiClient, Configuration

logger = logging.getLogger(__name__)


async def api_client(*, kubeconfig: Path | None) -> ApiClient:
    """A client for ``kubeconfig``, or in-cluster (service account token, refreshed) without one."""
    configuration = Configuration()
    if kubeconfig is None:
        # kubernetes_asyncio leaves this one function unannotated.
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        logger.info("Kubernetes API: in-cluster service account")
    else:
        await config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
        )
        logger.info("Kubernetes API: %s from %s", configuration.host, kubeconfig)
    return ApiClient(configuration=configuration)
