"""The platform's contracts, in one place: topics, event payloads, Redis keys, object layout,
and the worker's model-control endpoint (the controller's ``local`` target calls it).

Services import these names; none of them spells a topic, a key or an object path itself.
Every event carries ``schema_version`` so that a consumer can refuse what it does not know,
and every payload goes through :func:`encode` / :func:`decode`, the one serializer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION: Final = 1
DLQ_SUFFIX: Final = ".dlq"

# Identifiers are opaque strings; bounded so that a key or a header can never explode.
Identifier = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\s]+$")]
ModelName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
]


class ContractError(ValueError):
    """A payload that does not satisfy its contract; ``reason`` names the field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class Topics:
    """Kafka topic names. ``prefix`` isolates environments and tests on one cluster."""

    prefix: str = ""

    @property
    def user_actions(self) -> str:
        """User actions, keyed by user id so that one user's events stay in order."""
        return f"{self.prefix}user-actions"

    @property
    def model_published(self) -> str:
        """A verified model artifact is available, keyed by model name."""
        return f"{self.prefix}model-published"

    @property
    def rollout_events(self) -> str:
        """What the controller did about a published model, keyed by model name."""
        return f"{self.prefix}rollout-events"

    @staticmethod
    def dlq(topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return f"{topic}{DLQ_SUFFIX}"


class DlqHeader(enum.StrEnum):
    """Headers a dead-lettered record carries next to its original key and value."""

    TOPIC = "x-original-topic"
    PARTITION = "x-original-partition"
    OFFSET = "x-original-offset"
    ERROR = "x-error"
    ERROR_TYPE = "x-error-type"


# --------------------------------------------------------------------------- events


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    schema_version: Literal[1] = SCHEMA_VERSION


class ActionType(enum.StrEnum):
    """What a shopper did; the default weights grow with intent."""

    VIEW = "view"
    CLICK = "click"
    CART = "cart"
    PURCHASE = "purchase"


DEFAULT_ACTION_WEIGHTS: Final[dict[ActionType, float]] = {
    ActionType.VIEW: 1.0,
    ActionType.CLICK: 2.0,
    ActionType.CART: 4.0,
    ActionType.PURCHASE: 8.0,
}


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a timezone (e.g. 2026-01-31T12:00:00Z)")
    return value.astimezone(UTC)


class UserAction(_Event):
    """One shopper action. ``weight`` overrides the action type's configured weight."""

    event_id: Identifier
    user_id: Identifier
    item_id: Identifier
    action: ActionType
    weight: float | None = Field(default=None, gt=0, le=1e6)
    ts: datetime

    _check_ts = field_validator("ts")(_aware)


class EvalMetrics(BaseModel):
    """Evaluation figures of one recommender on the held-out split (e.g. ``precision@10``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: dict[str, float]
    baseline: dict[str, float]


class ModelPublished(_Event):
    """A model artifact was written, verified, and may be rolled out."""

    model_name: ModelName
    version: Identifier
    artifact_uri: Annotated[str, Field(min_length=1, max_length=2048)]
    created_at: datetime
    metrics: EvalMetrics
    data_snapshot: str = ""

    _check_created_at = field_validator("created_at")(_aware)


class RolloutStatus(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


class RolloutEvent(_Event):
    """The controller's account of one rollout decision or step."""

    model_name: ModelName
    version: Identifier
    artifact_uri: str
    status: RolloutStatus
    target: str
    reason: str = ""
    at: datetime

    _check_at = field_validator("at")(_aware)


# --------------------------------------------------------------------------- serializer

E = TypeVar("E", bound=BaseModel)


def encode(event: BaseModel) -> bytes:
    """Serialize a contract model to compact JSON bytes."""
    return event.__pydantic_serializer__.to_json(event)


def decode(model: type[E], data: bytes | str | None) -> E:
    """Parse and validate ``data`` as ``model``; raise :class:`ContractError` naming the field."""
    if data is None:
        raise ContractError("empty message: no value")
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        raise ContractError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``field: why`` (the first three, then a count)."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "<payload>"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def dumps(value: Any) -> bytes:
    """The serializer for non-event values stored by the platform (Redis lists, manifests)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


# --------------------------------------------------------------------------- redis


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The Redis key layout. ``prefix`` isolates environments and tests on one server.

    - ``{p}:rec:{model}:{user}`` the user's current list (one JSON value, replaced atomically);
    - ``{p}:hist:{user}`` recent actions, a sorted set scored by event time (member = event);
    - ``{p}:active:{model}`` the active model version with its popular list (the fallback);
    - ``{p}:popular:{model}:{version}`` the popular list of every version that was active.
    """

    prefix: str = "reco"

    def recommendations(self, model_name: str, user_id: str) -> str:
        return f"{self.prefix}:rec:{model_name}:{user_id}"

    def history(self, user_id: str) -> str:
        return f"{self.prefix}:hist:{user_id}"

    def active_model(self, model_name: str) -> str:
        return f"{self.prefix}:active:{model_name}"

    def popular(self, model_name: str, version: str) -> str:
        return f"{self.prefix}:popular:{model_name}:{version}"


class RecommendationList(BaseModel):
    """The value of a ``rec`` key: a user's top-N, stamped with where it came from."""

    model_config = ConfigDict(extra="forbid")

    model_version: str
    computed_at: datetime
    event_id: str | None = None
    event_ts: datetime | None = None
    items: list[str]
    scores: list[float]


class ActiveModel(BaseModel):
    """The value of an ``active`` key: the version workers serve and its popular fallback."""

    model_config = ConfigDict(extra="forbid")

    model_name: str
    version: str
    artifact_uri: str
    activated_at: datetime
    popular_items: list[str]
    popular_scores: list[float]


# --------------------------------------------------------------------------- worker model control

MODEL_CONTROL_PATH: Final = "/v1/model"


class ModelLoadRequest(BaseModel):
    """``POST /v1/model``: load this artifact (the worker answers 202, or 200 if it serves it)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_uri: Annotated[str, Field(min_length=1, max_length=2048)]


class ModelLoadFailure(BaseModel):
    """A worker's last failed load: which artifact, why, when."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_uri: str
    error: str
    at: datetime


class WorkerModelState(BaseModel):
    """What ``GET`` and ``POST /v1/model`` answer; ``None`` before the first model.

    Every field has a default, so that a reader tolerates a worker one version older or newer
    during a rollout (unknown fields are ignored).
    """

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    model_name: str | None = None
    version: str | None = None
    model_uri: str | None = None
    n_items: int | None = None
    activated_at: datetime | None = None
    loading: str | None = None
    last_error: ModelLoadFailure | None = None


# --------------------------------------------------------------------------- object storage


class ObjectLayout:
    """Paths inside the platform's bucket (or ``file://`` root)."""

    MODELS: Final = "models"
    SNAPSHOTS: Final = "snapshots"
    MANIFEST: Final = "manifest.json"

    @staticmethod
    def model_dir(model_name: str, version: str) -> str:
        """``models/<model_name>/<version>``: an immutable model artifact."""
        return f"{ObjectLayout.MODELS}/{model_name}/{version}"

    @staticmethod
    def published_marker(model_name: str, version: str) -> str:
        """``models/<model_name>/<version>/published.json``: the event announcing the artifact.

        Written by the trainer after the event was acknowledged, so that a re-run knows the
        announcement went out; it is not part of the artifact (the manifest does not list it).
        """
        return f"{ObjectLayout.model_dir(model_name, version)}/published.json"

    @staticmethod
    def snapshot_dir(topic: str, snapshot_id: str) -> str:
        """``snapshots/<topic>/<snapshot_id>``: an archived slice of a topic."""
        return f"{ObjectLayout.SNAPSHOTS}/{topic}/{snapshot_id}"

    @staticmethod
    def snapshot_offsets(topic: str, group: str) -> str:
        """Where the trainer records up to which offsets it has archived ``topic``."""
        return f"{ObjectLayout.SNAPSHOTS}/{topic}/_offsets/{group}.json"
