"""The trainer's settings: the shared backends plus ``RECO_TRAINER_*`` (see docs/trainer.md).

Hyper-parameters nest under ``RECO_TRAINER_PARAMS__*`` (e.g. ``RECO_TRAINER_PARAMS__EPOCHS``);
the ``train`` command's flags override them for one run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from reco_common.contracts import Identifier, ModelName
from reco_common.interactions import column_map
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
    params_from: str | None = None  # a model artifact whose tuned parameters to reuse
    params: TrainParams = Field(default_factory=TrainParams)
    columns: Annotated[dict[str, str], NoDecode] = {}
    min_weight: Annotated[float, Field(gt=0)] | None = None

    @field_validator("columns", mode="before")
    @classmethod
    def _column_map(cls, value: object) -> object:
        """``user=userId,item=movieId`` or the same as a JSON object."""
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = json.loads(value)
        return column_map(value) if isinstance(value, str | dict) else value


class Settings(CommonSettings):
    """Everything the trainer process needs."""

    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
