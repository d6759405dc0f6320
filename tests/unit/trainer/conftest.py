"""Tiny synthetic shops and parameters so that a full training run takes about a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from reco_common.interactions import LogFormat
from reco_common.synth import ShopConfig, generate, write_shop
from reco_trainer.params import TrainParams


@pytest.fixture(scope="session")
def shop_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """``interactions`` and ``items`` of a 4k-event shop as CSV files."""
    shop = generate(ShopConfig(n_interactions=4_000, n_users=150, n_items=120, n_categories=6))
    return write_shop(shop, str(tmp_path_factory.mktemp("shop")), fmt=LogFormat.CSV)


@pytest.fixture
def tiny_params() -> TrainParams:
    return TrainParams(
        components=8, epochs=4, patience=2, threads=1, members=1, validation_users=100
    )


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()
