"""Fixtures of the worker's unit tests."""

from __future__ import annotations

import pytest
from worker_models import clustered_arrays

from reco_worker.scoring import ServingModel


@pytest.fixture
def clustered() -> ServingModel:
    return ServingModel(name="shop", version="v1", uri="file:///m", arrays=clustered_arrays())
