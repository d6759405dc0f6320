"""Fixtures shared by every tier: unique names so that tests never see each other's data."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def unique() -> str:
    """A short id, unique per test, for topic / key / object prefixes."""
    return uuid.uuid4().hex[:10]
