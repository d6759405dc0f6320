"""The worker's typed settings: the shared backends plus ``RECO_WORKER_*`` (see docs/worker.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reco_common.contracts import (
    DEFAULT_ACTION_WEIGHTS,
    DEFAULT_BLEND,
    MODEL_MANIFEST_SHA256_ENV,
    MODEL_URI_ENV,
    ActionType,
)
from reco_common.kafka import GroupTimeouts
from reco_common.settings import BearerToken, CommonSettings, Environment, refuse_placeholder
from reco_worker.scoring import Policy
from reco_worker.topn import ANN_EXPANSION, ANN_MAX_FETCH, ANN_MIN_ITEMS, ANN_RECALL, IndexUse

Positive = Annotated[float, Field(gt=0)]


class WorkerSettings(BaseSettings):
    """``MODEL_URI`` (or ``RECO_WORKER_MODEL_URI``) and the ``RECO_WORKER_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix="RECO_WORKER_",
        extra="ignore",
        populate_by_name=True,
        protected_namespaces=(),
    )

    common: CommonSettings = Field(default_factory=CommonSettings)
    model_uri: str | None = Field(
        default=None, validation_alias=AliasChoices(MODEL_URI_ENV, "RECO_WORKER_MODEL_URI")
    )
    model_manifest_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None,
        validation_alias=AliasChoices(
            MODEL_MANIFEST_SHA256_ENV, "RECO_WORKER_MODEL_MANIFEST_SHA256"
        ),
    )
    cache_dir: Path = Path("/tmp/reco-worker")
    http_host: str = "0.0.0.0"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8081
    control_token: BearerToken = SecretStr("dev-token")
    # POST /v1/model without the announcement's manifest pin: refused unless allowed, in dev only.
    allow_unpinned_loads: bool = False
    grace_s: Positive = 20.0
    # BLAS threads for scoring: 1 leaves a core to the event loop and measured fastest on 2 cores.
    blas_threads: Annotated[int, Field(ge=1, le=64)] = 1
    model_retry_max_s: Positive = 30.0

    # Consumer
    max_batch: Annotated[int, Field(ge=1, le=10_000)] = 500
    fetch_max_wait_ms: Annotated[int, Field(ge=0, le=500)] = 5
    # A batch, retries included, is cancelled and refetched after batch_timeout_s (five Redis
    # attempts with 2 s timeouts fit); the group waits that long for it before moving partitions.
    # A member silent for session_timeout_s is evicted; its late writes are fenced in Redis.
    batch_timeout_s: Positive = 20.0
    session_timeout_s: Annotated[float, Field(ge=6, le=300)] = 10.0
    # How often the generation marker is checked for a loss of Redis' data (then: rebuild).
    generation_check_s: Positive = 5.0
    # The trainer's store (its RECO_TRAINER_STORE_URI): a rebuild replays the snapshots archived
    # there for events the topic no longer retains, then the topic from where they end. Unset:
    # the topic alone (docs/worker.md, "Rebuild").
    archive_uri: Annotated[str | None, Field(pattern=r"^(s3|file)://")] = None

    # History and timestamps
    history_len: Annotated[int, Field(ge=1, le=1000)] = 200
    history_ttl_s: Annotated[int, Field(ge=60)] = 30 * 24 * 3600
    max_future_skew_s: Annotated[float, Field(ge=0)] = 300.0

    # Real-time policy (defaults chosen with `reco-worker replay`, docs/worker.md)
    top_n: Annotated[int, Field(ge=1, le=1000)] = 100
    exclude_seen: bool = True
    blend: Annotated[float, Field(ge=0, le=1)] = DEFAULT_BLEND
    half_life_s: Positive = 120.0
    neighbour_weight: Annotated[float, Field(ge=0)] = 5.0
    neighbour_history: Annotated[int, Field(ge=1, le=1000)] = 3
    action_weights: dict[ActionType, Positive] = Field(
        default_factory=lambda: dict(DEFAULT_ACTION_WEIGHTS)
    )

    # Top-N from the artifact's approximate index (when it has one) from this catalog size up;
    # exact below (the crossover measured in docs/benchmarks.md). ANN_RECALL: the recall@100
    # the IVF lists are probed for (or the ScaNN leaves searched), by the index's own curve
    # (the trainer's measurement); ANN_PROBES, when set, fixes the lists a query probes or the
    # leaves it searches instead (160 lists for an IVF index without a curve); ANN_EXPANSION: HNSW's ef, recall against time; ANN_MAX_FETCH bounds the
    # candidates asked of HNSW for one query.
    ann_min_items: Annotated[int, Field(ge=0)] = ANN_MIN_ITEMS
    ann_expansion: Annotated[int, Field(ge=1, le=4096)] = ANN_EXPANSION
    ann_max_fetch: Annotated[int, Field(ge=1, le=10_000)] = ANN_MAX_FETCH
    ann_probes: Annotated[int, Field(ge=1, le=100_000)] | None = None
    ann_recall: Annotated[float, Field(gt=0, le=1)] = ANN_RECALL

    @model_validator(mode="after")
    def _no_placeholder_token_outside_dev(self) -> Self:
        if self.common.env is not Environment.DEV:
            refuse_placeholder("RECO_WORKER_CONTROL_TOKEN", self.control_token)
            if self.allow_unpinned_loads:
                raise ValueError("RECO_WORKER_ALLOW_UNPINNED_LOADS is for RECO_ENV=dev only")
        return self

    @property
    def policy(self) -> Policy:
        return Policy(
            blend=self.blend,
            half_life_s=self.half_life_s,
            neighbour_weight=self.neighbour_weight,
            neighbour_history=self.neighbour_history,
            action_weights={**DEFAULT_ACTION_WEIGHTS, **self.action_weights},
            top_n=self.top_n,
            exclude_seen=self.exclude_seen,
        )

    @property
    def index_use(self) -> IndexUse:
        return IndexUse(
            min_items=self.ann_min_items,
            expansion=self.ann_expansion,
            max_fetch=self.ann_max_fetch,
            probes=self.ann_probes,
            recall=self.ann_recall,
        )

    @property
    def group_timeouts(self) -> GroupTimeouts:
        return GroupTimeouts(
            batch_s=self.batch_timeout_s,
            session_s=self.session_timeout_s,
            heartbeat_s=self.session_timeout_s / 3,
        )

    def group_id(self, model_name: str) -> str:
        """One consumer group per model name, namespaced like the topics."""
        return f"{self.common.kafka.topic_prefix}worker-{model_name}"
