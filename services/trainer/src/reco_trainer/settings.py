"""The trainer's settings: the shared backends plus ``RECO_TRAINER_*`` (see docs/trainer.md).

Hyper-parameters nest under ``RECO_TRAINER_PARAMS__*`` (e.g. ``RECO_TRAINER_PARAMS__EPOCHS``);
the ``train`` command's flags override them for one run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from reco_common.contracts import Identifier, ModelName
from reco_common.settings import CommonSettings
from reco_trainer.params import TrainParams


class TrainerSettings(BaseSettings):
    """``RECO_TRAINER_*``: where models and snapshots go, what ``run`` reads, and the params."""

    model_config = SettingsConfigDict(
        env_prefix="RECO_TRAINER_",
        env_nested_delimiter="__",
        extra="ignore",
        protected_namespaces=(),
    )

    model_name: ModelName = "shop"
    store_uri: Annotated[str, Field(pattern=r"^(s3|file)://")] = "s3://reco"
    base_interactions: list[str] = []
    item_features: str | None = None
    user_features: str | None = None
    snapshot_group: Identifier = "trainer"
    snapshot_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    publish: bool = True
    metrics_out: Path | None = None
    params: TrainParams = Field(default_factory=TrainParams)


class Settings(CommonSettings):
    """Everything the trainer process needs."""

    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
