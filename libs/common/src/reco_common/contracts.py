"""The platform's contracts, in one place: topics, event payloads, Redis keys and values, object
layout, and the worker's model-control endpoint (the controller's ``local`` target calls it).

Services import these names; none of them spells a topic, a key or an object path itself.
Every event carries ``schema_version``. Compatibility rule of the events (docs/architecture.md):
version N+1 may only add optional fields; a consumer of version N reads versions
:data:`READABLE_SCHEMA_VERSIONS` (its own, the older ones, and the next) and ignores the fields
it does not know, so producers can be upgraded before consumers; anything else (a version two
ahead, a removed or retyped field) is refused and dead-lettered. A breaking change is a new topic.
Every value on Kafka, in Redis and on the model-control endpoint is a ``msgspec.Struct`` and
goes through :func:`encode` / :func:`decode`, the one codec, on the writing and the reading side alike: msgspec decodes JSON
straight into the typed struct, validating as it goes, faster than ``orjson.loads`` into a dict
(bench/codec/codec.py, docs/benchmarks.md). Building a struct in Python does not validate it
(only the timestamp rule below runs): what crosses a process boundary is validated on decode.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from itertools import islice
from typing import Annotated, Any, Final, TypeVar

import msgspec
import orjson
from msgspec import Meta, Struct
from msgspec.structs import force_setattr
from pydantic import Field, ValidationError

SCHEMA_VERSION: Final = 1
READABLE_SCHEMA_VERSIONS: Final = range(1, SCHEMA_VERSION + 2)
DLQ_SUFFIX: Final = ".dlq"

# Identifiers are opaque strings; bounded so that a key or a header can never explode. Each
# alias carries the rule for msgspec (contract values) and for pydantic (settings, API queries).
# Each pattern holds for the whole string: pydantic's ``$`` is the end of the text, but msgspec
# searches with Python's ``re``, whose ``$`` also matches before a final newline, so its copy
# ends in ``\Z`` instead (an id ending in a newline broke the history scripts' framing).
_IDENTIFIER: Final = r"^[^\s]+$"
_MODEL_NAME: Final = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"


def _whole(pattern: str) -> str:
    """``pattern`` (ending in ``$``) for Python's ``re.search``: anchored at the very end."""
    return pattern.removesuffix("$") + r"\Z"


Identifier = Annotated[
    str,
    Field(min_length=1, max_length=256, pattern=_IDENTIFIER),
    Meta(min_length=1, max_length=256, pattern=_whole(_IDENTIFIER)),
]
ModelName = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=_MODEL_NAME),
    Meta(min_length=1, max_length=63, pattern=_whole(_MODEL_NAME)),
]
Uri = Annotated[str, Meta(min_length=1, max_length=2048)]
# One segment of an object or cache path taken from a document (a manifest's version, a file
# name): no separator, no leading dot (so neither ``.`` nor ``..``), nothing that a file system
# or an object key could read as a step outside its directory.
_PATH_SEGMENT: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
PathSegment = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=_PATH_SEGMENT),
    Meta(min_length=1, max_length=128, pattern=_whole(_PATH_SEGMENT)),
]
Sha256Hex = Annotated[str, Meta(pattern=_whole(r"^[0-9a-f]{64}$"))]


class ContractError(ValueError):
    """A payload that does not satisfy its contract; ``reason`` names the field and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- topics


_USER_ACTIONS: Final = "user-actions"
_MODEL_PUBLISHED: Final = "model-published"
_ROLLOUT_EVENTS: Final = "rollout-events"

# How many partitions each topic is created with, by whichever process needs it first
# (reco_common.kafka.ensure_topics). user-actions: the worker's unit of parallelism (a
# consumer group spreads the partitions over the replicas, so at most 24 worker processes per
# model share the work), fixed for the life of the topic since a user's events must stay in
# one partition: sized for growth (docs/scaling.md, "Partitions and replication"). A
# dead-letter topic has 1.
PARTITIONS: Final[Mapping[str, int]] = {_USER_ACTIONS: 24, _MODEL_PUBLISHED: 1, _ROLLOUT_EVENTS: 1}


@dataclass(frozen=True, slots=True)
class Topics:
    """Kafka topic names. ``prefix`` isolates environments and tests on one cluster."""

    prefix: str = ""

    @property
    def user_actions(self) -> str:
        """User actions, keyed by user id so that one user's events stay in order."""
        return f"{self.prefix}{_USER_ACTIONS}"

    @property
    def model_published(self) -> str:
        """A verified model artifact is available, keyed by model name."""
        return f"{self.prefix}{_MODEL_PUBLISHED}"

    @property
    def rollout_events(self) -> str:
        """What the controller did about a published model, keyed by model name."""
        return f"{self.prefix}{_ROLLOUT_EVENTS}"

    @staticmethod
    def dlq(topic: str) -> str:
        """The dead-letter topic of ``topic``."""
        return f"{topic}{DLQ_SUFFIX}"

    def partitions(self, topic: str) -> int:
        """The partition count of ``topic`` (one of these names, or its dead-letter topic)."""
        if topic.endswith(DLQ_SUFFIX):
            return 1
        base = topic.removeprefix(self.prefix)
        if not topic.startswith(self.prefix) or base not in PARTITIONS:
            raise ValueError(f"{topic!r} is not a topic of the contract (prefix {self.prefix!r})")
        return PARTITIONS[base]


class DlqHeader(enum.StrEnum):
    """Headers a dead-lettered record carries next to its original key and value."""

    TOPIC = "x-original-topic"
    PARTITION = "x-original-partition"
    OFFSET = "x-original-offset"
    ERROR = "x-error"
    ERROR_TYPE = "x-error-type"
    # Only on a record too large for the dead-letter topic: its value is cut to a prefix.
    ORIGINAL_SIZE = "x-original-size"


# --------------------------------------------------------------------------- events


class _Event(Struct, frozen=True, kw_only=True):
    """Unknown fields are ignored (a newer producer's optional additions), see the module doc."""

    schema_version: Annotated[
        int, Meta(ge=READABLE_SCHEMA_VERSIONS.start, le=READABLE_SCHEMA_VERSIONS.stop - 1)
    ] = SCHEMA_VERSION


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
# The real-time policy's default weight of the recent items against the user's own vector
# (docs/worker.md); the trainer's IVF recall curve blends its queries the same way.
DEFAULT_BLEND: Final = 0.75

# An event's own timestamps must carry a timezone; they are kept in UTC.
AwareDatetime = Annotated[datetime, Meta(tz=True)]


def _in_utc(struct: Struct, name: str) -> None:
    """The timestamp rule, on decode and on construction: aware, then converted to UTC."""
    value: datetime = getattr(struct, name)
    if value.tzinfo is None:
        raise ValueError(f"{name}: timestamp must carry a timezone (e.g. 2026-01-31T12:00:00Z)")
    if value.tzinfo is not UTC:
        force_setattr(struct, name, value.astimezone(UTC))


class UserAction(_Event, frozen=True, kw_only=True):
    """One shopper action. ``weight`` overrides the action type's configured weight."""

    event_id: Identifier
    user_id: Identifier
    item_id: Identifier
    action: ActionType
    weight: Annotated[float, Meta(gt=0, le=1e6)] | None = None
    ts: AwareDatetime

    def __post_init__(self) -> None:
        _in_utc(self, "ts")


# The trainer's primary metric (its default early-stopping metric) and, by default, the one the
# controller's quality gate judges, against the active model and the popularity baseline.
PRIMARY_METRIC: Final = "precision@10"


class EvalMetrics(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Evaluation figures of one recommender on the held-out split (e.g. ``precision@10``)."""

    model: dict[str, float]
    baseline: dict[str, float]


class ModelPublished(_Event, frozen=True, kw_only=True):
    """A model artifact was written, verified, and may be rolled out.

    ``manifest_sha256`` pins the artifact: the sha256 of its ``manifest.json`` bytes, which list
    the sha256 of every other file. A reader trusts nothing of the artifact (not even these
    ``metrics``, a copy for people and dashboards) before the manifest matched it. Left out of
    the JSON when unset, so that an event without it is byte for byte what it was before.
    """

    model_name: ModelName
    version: Identifier
    artifact_uri: Uri
    created_at: AwareDatetime
    metrics: EvalMetrics
    data_snapshot: str = ""
    manifest_sha256: Sha256Hex | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        _in_utc(self, "created_at")


class RolloutStatus(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


class RolloutEvent(_Event, frozen=True, kw_only=True):
    """The controller's account of one rollout decision or step."""

    model_name: ModelName
    version: Identifier
    artifact_uri: str
    status: RolloutStatus
    target: str
    reason: str = ""
    at: AwareDatetime

    def __post_init__(self) -> None:
        _in_utc(self, "at")


# --------------------------------------------------------------------------- codec

S = TypeVar("S", bound=Struct)


def _plain_python(value: Any) -> Any:
    """A numpy scalar or array (figures computed with numpy) as the Python value it holds."""
    to_python = getattr(value, "tolist", None)
    if callable(to_python):
        return to_python()
    raise NotImplementedError(f"{type(value).__name__} is not part of a contract")


_encoder: Final = msgspec.json.Encoder(enc_hook=_plain_python)


def encode(value: Struct) -> bytes:
    """Serialize a contract value to compact JSON bytes."""
    return _encoder.encode(value)


@cache
def _decoder(model: type[S]) -> msgspec.json.Decoder[S]:
    return msgspec.json.Decoder(model)


def decode(model: type[S], data: bytes | str | None) -> S:
    """Parse and validate ``data`` as ``model``; raise :class:`ContractError` naming the field."""
    if data is None:
        raise ContractError("empty message: no value")
    decoder: msgspec.json.Decoder[S] = _decoder(model)  # one per contract type, built once
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ContractError(_describe(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ContractError(f"<payload>: {exc}") from None


# Many payloads at once (a rebuild folds millions): msgspec checks a pattern with one call into
# Python's ``re`` per value, which is half of decoding a user action. :func:`decode_many` decodes
# into a subclass of the model whose identifiers are only bounded (the rest of the model as it
# is), then checks every identifier of the batch for white space with one search over them all
# (an identifier's pattern is exactly: not empty, no white space). A payload that fails either
# is decoded alone by :func:`decode`, which names its error; so the same payloads are accepted,
# with the same values, and the same errors raised as by ``decode`` of each.
_BOUNDED_IDENTIFIER = Annotated[str, Meta(min_length=1, max_length=256)]
_WHITE_SPACE: Final = re.compile(r"\s")  # what ``[^\s]`` in the identifier pattern excludes


@cache
def _batch_decoder(model: type[S]) -> tuple[msgspec.json.Decoder[S], tuple[str, ...]]:
    """A decoder of ``model`` minus its identifiers' patterns, and the identifier fields."""
    names = tuple(f.name for f in msgspec.structs.fields(model) if f.type == Identifier)
    bounded = msgspec.defstruct(
        f"{model.__name__}OfBatch",
        [(n, _BOUNDED_IDENTIFIER) for n in names],
        bases=(model,),
        kw_only=True,  # the fields keep the model's order
    )
    return msgspec.json.Decoder(bounded), names


def decode_many(model: type[S], payloads: Sequence[bytes | None]) -> list[S | ContractError]:
    """Each payload as :func:`decode` would give it (the value, or the error it would raise),
    for about half the cost per payload (see above). The values are of a subclass of ``model``:
    equal to ``decode``'s field by field (``msgspec.structs.astuple``), not by ``==``."""
    decoder, names = _batch_decoder(model)
    out: list[S | ContractError] = []
    for data in payloads:
        try:
            out.append(decoder.decode(data))  # type: ignore[arg-type]  # None: a TypeError
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError):
            out.append(_error_of(model, data))
    values = [v for v in out if not isinstance(v, ContractError)]
    if names and _WHITE_SPACE.search("\0".join(_identifiers(values, names))):
        for at, value in enumerate(out):
            if not isinstance(value, ContractError) and _WHITE_SPACE.search(
                "\0".join(_identifiers([value], names))
            ):
                out[at] = _error_of(model, payloads[at])
    return out


def _identifiers(values: Sequence[Struct], names: tuple[str, ...]) -> list[str]:
    return [getattr(value, name) for value in values for name in names]


def _error_of(model: type[S], data: bytes | None) -> ContractError:
    try:
        decode(model, data)
    except ContractError as exc:
        return exc
    raise AssertionError(f"decode accepted what the batch decoder refused: {data!r}")


# msgspec's messages end with the JSON path (" - at `$.metrics.model`"); an unknown or missing
# field is named inside the message instead.
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|required) field `(?P<name>[^`]+)`")


def _describe(message: str) -> str:
    """``field: why``, the shape pydantic's errors had (and :func:`describe_validation_error`)."""
    at = _AT.search(message)
    path = at["path"] if at else ""
    why = message[: at.start()] if at else message
    named = _NAMED_FIELD.search(why)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
    return f"{path or '<payload>'}: {why}"


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error (settings, parameters) as one line per problem: ``field: why``
    (the first three, then a count)."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "<payload>"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def dumps(value: Any) -> bytes:
    """The serializer for untyped files the platform writes (id lists, offsets, reports)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


# --------------------------------------------------------------------------- redis


# The version of the key layout below. Layout 1 (before Redis Cluster) named keys without hash
# tags and kept the fences in one hash per partition; a Redis holding layout 1 data is refused by
# the worker (docs/architecture.md, "Redis key layout": flush the prefix, rebuild from the log).
REDIS_LAYOUT: Final = 2


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The Redis key layout (:data:`REDIS_LAYOUT`). ``prefix`` isolates environments and tests.

    Every key is hash-tagged so that the keys one request or one script touches share a Redis
    Cluster slot (the part in braces decides the slot): a user's keys are tagged with the user,
    a model's records with the model. The same layout serves a single Redis.

    Per user, tag ``{u:<user>}`` (the worker's fenced scripts and the API's read are single-slot):

    - ``{p}:{u:<user>}:rec:<model>`` the user's current list (one value, replaced atomically);
    - ``{p}:{u:<user>}:hist`` recent actions, a sorted set scored by event time (member = event);
    - ``{p}:{u:<user>}:fence`` a hash of the log offsets the user's history (field
      ``h:<partition>``) and lists (field ``l:<model>:<partition>``) were last written from (in
      that ``user-actions`` partition, see ``reco_common.redis_store``): an older offset is refused.

    Per model, tag ``{m:<model>}`` (written by the controller's fenced script, read rarely by the
    API, which keeps them in process):

    - ``{p}:{m:<model>}:active`` the active model version with its popular list (the fallback),
      written by the controller only, once a rollout has succeeded (and again on rollback);
    - ``{p}:{m:<model>}:popular:<version>`` the popular list of every version that was active;
    - ``{p}:{m:<model>}:fence`` the epoch (lineage and number) of the controller's last write of
      the model's ``active`` and ``rollout`` records: an older epoch is refused;
    - ``{p}:{m:<model>}:rollout`` the ``local`` rollout target's state (:class:`LocalRollout`).

    Alone: ``{p}:generation``, a random marker the first worker sets (when it disappears or
    changes, Redis lost its data and the workers rebuild it from the log), and ``{p}:layout``,
    the :data:`REDIS_LAYOUT` the data was written in.

    The tags' ``u:`` / ``m:`` keep them non-empty (an empty ``{}`` would hash the whole key) and
    apart; an id holding ``}`` cuts its tag short, the same way in all of its keys.
    """

    prefix: str = "reco"

    def _user(self, user_id: str) -> str:
        return f"{self.prefix}:{{u:{user_id}}}"

    def _model(self, model_name: str) -> str:
        return f"{self.prefix}:{{m:{model_name}}}"

    def recommendations(self, model_name: str, user_id: str) -> str:
        return f"{self._user(user_id)}:rec:{model_name}"

    def history(self, user_id: str) -> str:
        return f"{self._user(user_id)}:hist"

    def user_fence(self, user_id: str) -> str:
        return f"{self._user(user_id)}:fence"

    @staticmethod
    def history_fence_field(partition: int) -> str:
        """The field of :meth:`user_fence` holding the history's offset in ``partition``."""
        return f"h:{partition}"

    @staticmethod
    def lists_fence_field(partition: int, model_name: str) -> str:
        """The field of :meth:`user_fence` holding the model's list's offset in ``partition``."""
        return f"l:{model_name}:{partition}"

    def active_model(self, model_name: str) -> str:
        return f"{self._model(model_name)}:active"

    def popular(self, model_name: str, version: str) -> str:
        return f"{self._model(model_name)}:popular:{version}"

    def active_fence(self, model_name: str) -> str:
        return f"{self._model(model_name)}:fence"

    def rollout(self, model_name: str) -> str:
        return f"{self._model(model_name)}:rollout"

    def generation(self) -> str:
        return f"{self.prefix}:generation"

    def layout(self) -> str:
        return f"{self.prefix}:layout"


class RecommendationList(Struct, kw_only=True, forbid_unknown_fields=True):
    """The value of a ``rec`` key: a user's top-N, stamped with where it came from."""

    model_version: str
    computed_at: datetime
    event_id: str | None = None
    event_ts: datetime | None = None
    items: list[str]
    scores: list[float]


class ActiveModel(Struct, kw_only=True, forbid_unknown_fields=True):
    """The value of an ``active`` (and a ``popular``) key: the version workers serve and its
    popular fallback."""

    model_name: str
    version: str
    artifact_uri: str
    activated_at: datetime
    popular_items: list[str]
    popular_scores: list[float]


class ModelRef(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A model as the controller and its rollout targets remember it: where it is and what
    pins its manifest (the workers verify it against ``manifest_sha256``); only ``uri`` is
    always known."""

    uri: str
    version: str | None = None
    manifest_sha256: str | None = None
    created_at: datetime | None = None
    metrics: EvalMetrics | None = None

    @staticmethod
    def of(event: ModelPublished) -> ModelRef:
        pin = event.manifest_sha256
        return ModelRef(
            uri=event.artifact_uri,
            version=event.version,
            metrics=event.metrics,
            created_at=event.created_at,
            manifest_sha256=pin if isinstance(pin, str) else None,
        )


class LocalRollout(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The value of a ``rollout`` key: the ``local`` target's memory (a Deployment keeps the
    same in its env and annotations). ``desired``: what the workers were last told to run;
    ``previous``: what ran before it; ``failed_uri``: the last model rolled back; ``epoch``:
    incremented by each change, the fence of the ``active`` record."""

    desired: ModelRef | None = None
    previous: ModelRef | None = None
    failed_uri: str | None = None
    epoch: int = 0


# --------------------------------------------------------------------------- served lists
#
# A ``rec`` value is stored so that the API answers ``n``, ``offset`` and ``exclude`` by slicing
# bytes instead of decoding the whole list and encoding a response (format 2). Little-endian,
# after the 4-byte magic:
#
#   u32 flags | u32 count | u32 len(head) | u32 len(extra) | u32 len(ids) | head | extra | ids | scores
#
# - ``head``: the JSON members a response repeats, ``"model_version":…,"computed_at":…``;
# - ``extra``: the other members of :class:`RecommendationList` (``"event_id":…,"event_ts":…``);
# - ``ids``, ``scores``: the JSON arrays ``["i-1","i-7"]`` and ``[3.2,2.9]``;
# - flag 1 (``PLAIN_IDS``): no id needed escaping, so ``","`` occurs in ``ids`` only between
#   two ids and ``,`` in ``scores`` only between two scores: a reader cuts out items with one
#   ``bytes.split`` per array (in C, stopping after ``offset + n``), and the worker writes no
#   per-item index (the write costs about one msgspec encode of the list). Without the flag,
#   the reader decodes the arrays.
#
# Format 1, a JSON :class:`RecommendationList`, is still read (values written before format 2).
# The magic starts with 0xff, which no JSON text (format 1 starts with ``{``) and no UTF-8 has.

SERVED_LIST_MAGIC: Final = b"\xffRL2"
PLAIN_IDS: Final = 1
_SERVED_HEADER: Final = struct.Struct("<4sIIIII")
_ID_SEP: Final = b'","'
_OPEN, _CLOSE = b"[]"  # the arrays' brackets, as byte values


class _ServedHead(Struct):
    model_version: str | None
    computed_at: datetime | None


class _ServedExtra(Struct):
    event_id: str | None = None
    event_ts: datetime | None = None


def _members(value: Struct) -> bytes:
    return _encoder.encode(value)[1:-1]  # the object's members without its braces


def encode_served_list(
    *,
    model_version: str | None,
    computed_at: datetime | None,
    items: Sequence[str],
    scores: Sequence[float | None],
    event_id: str | None = None,
    event_ts: datetime | None = None,
) -> bytes:
    """A list in format 2 (see above): a user's ``rec`` value, or a popular / static list."""
    if len(items) != len(scores):
        raise ContractError(f"items: {len(items)} items but {len(scores)} scores")
    head = _members(_ServedHead(model_version, computed_at))
    extra = _members(_ServedExtra(event_id, event_ts))
    ids = _encoder.encode(items)
    flags = 0 if b"\\" in ids else PLAIN_IDS
    header = _SERVED_HEADER.pack(
        SERVED_LIST_MAGIC, flags, len(items), len(head), len(extra), len(ids)
    )
    return b"".join((header, head, extra, ids, _encoder.encode(scores)))


def encode_recommendations(value: RecommendationList) -> bytes:
    """The ``rec`` value of ``value`` (what the worker writes)."""
    return encode_served_list(
        model_version=value.model_version,
        computed_at=value.computed_at,
        items=value.items,
        scores=value.scores,
        event_id=value.event_id,
        event_ts=value.event_ts,
    )


class ServedList:
    """A format-2 list, parsed just enough to slice (the arrays without their brackets)."""

    __slots__ = ("count", "extra", "flags", "head", "ids", "scores")

    def __init__(
        self, *, flags: int, count: int, head: bytes, extra: bytes, ids: bytes, scores: bytes
    ) -> None:
        self.flags = flags
        self.count = count
        self.head = head  # the response's members: "model_version":…,"computed_at":…
        self.extra = extra
        self.ids = ids  # "i-1","i-7"
        self.scores = scores  # 3.2,2.9

    @staticmethod
    def parse(raw: bytes) -> ServedList:
        """Split ``raw`` by its header. The framing is checked (lengths, the arrays' brackets,
        the item count as the arrays are sliced), not every byte of the JSON the codec wrote."""
        try:
            magic, flags, count, head_len, extra_len, ids_len = _SERVED_HEADER.unpack_from(raw)
        except struct.error:
            raise ContractError("<payload>: shorter than a served list's header") from None
        extra_at = _SERVED_HEADER.size + head_len
        ids_at = extra_at + extra_len
        scores_at = ids_at + ids_len
        framed = (
            scores_at + 2 <= len(raw)
            and raw[ids_at] == raw[scores_at] == _OPEN
            and raw[scores_at - 1] == raw[-1] == _CLOSE
        )
        if magic != SERVED_LIST_MAGIC or not framed:
            raise ContractError("<payload>: not a served list of format 2, or cut short")
        return ServedList(
            flags=flags,
            count=count,
            head=raw[_SERVED_HEADER.size : extra_at],
            extra=raw[extra_at:ids_at],
            ids=raw[ids_at + 1 : scores_at - 1],
            scores=raw[scores_at + 1 : -1],
        )

    def item_arrays(self) -> tuple[list[str], list[float | None]]:
        """The ids and scores, decoded (the API's path for lists whose ids needed escaping)."""
        both = b'{"ids":[' + self.ids + b'],"scores":[' + self.scores + b"]}"
        arrays = decode(_ServedArrays, both)
        if len(arrays.ids) != self.count or len(arrays.scores) != self.count:
            raise ContractError(f"items: {len(arrays.ids)} ids, {len(arrays.scores)} scores")
        return arrays.ids, arrays.scores

    def select(self, *, exclude: frozenset[str], offset: int, n: int) -> bytes:
        """The JSON array of the ``n`` items after ``offset`` once the ``exclude`` ids are
        taken out, as ``{"item_id":…,"score":…}`` objects (the API's response items)."""
        if not self.flags & PLAIN_IDS:
            return self._select_decoded(exclude=exclude, offset=offset, n=n)
        if exclude:
            ids, scores = self._plain(self.count)
            out = {item.encode() for item in exclude}
            kept = [k for k, item in enumerate(ids) if item not in out][offset : offset + n]
            ids, scores = [ids[k] for k in kept], [scores[k] for k in kept]
        else:
            ids, scores = self._plain(offset + n)
            ids, scores = ids[offset : offset + n], scores[offset : offset + n]
        fields: list[bytes] = [b""] * (2 * len(ids))
        fields[0::2] = ids
        fields[1::2] = scores
        return _items_template(len(ids)) % tuple(fields)

    def _plain(self, first: int) -> tuple[list[bytes], list[bytes]]:
        """The raw bytes of the ids and scores of (at least) the ``first`` items, unparsed:
        one ``split`` each, in C (the last part is the rest when the list is longer)."""
        if not self.count:
            return [], []
        ids = self.ids[1:-1].split(_ID_SEP, first)  # the arrays' outer quotes off
        scores = self.scores.split(b",", first)
        if len(ids) != len(scores) or len(ids) < min(first, self.count):
            raise ContractError(f"items: fewer than the {self.count} the header says")
        return ids, scores

    def _select_decoded(self, *, exclude: frozenset[str], offset: int, n: int) -> bytes:
        ids, scores = self.item_arrays()
        pairs = (
            (item, score) for item, score in zip(ids, scores, strict=True) if item not in exclude
        )
        return _encoder.encode([_ServedItem(i, s) for i, s in islice(pairs, offset, offset + n)])

    def decoded(self) -> RecommendationList:
        """The whole list as a :class:`RecommendationList` (tests, tools; not the API's path)."""
        head = decode(_ServedHead, b"{" + self.head + b"}")
        extra = decode(_ServedExtra, b"{" + self.extra + b"}")
        if head.model_version is None or head.computed_at is None:
            raise ContractError("<payload>: a user's list needs its model version and time")
        ids, scores = self.item_arrays()
        return RecommendationList(
            model_version=head.model_version,
            computed_at=head.computed_at,
            event_id=extra.event_id,
            event_ts=extra.event_ts,
            items=ids,
            scores=[0.0 if score is None else score for score in scores],
        )


class _ServedItem(Struct):
    item_id: str
    score: float | None


@cache
def _items_template(count: int) -> bytes:
    """``[{"item_id":"%b","score":%b},…]`` for ``count`` items whose ids need no escaping."""
    return b"[" + b",".join([b'{"item_id":"%b","score":%b}'] * count) + b"]"


class _ServedArrays(Struct, array_like=False):
    ids: list[str]
    scores: list[float | None]

    def astuple(self) -> tuple[list[str], list[float | None]]:
        return self.ids, self.scores


def decode_recommendations(raw: bytes | str) -> RecommendationList:
    """A ``rec`` value of either format as a :class:`RecommendationList`."""
    data = raw.encode() if isinstance(raw, str) else raw
    if data[:1] == b"{":
        return decode(RecommendationList, data)
    return ServedList.parse(data).decoded()


# A ``hist`` member is one event as ``1<TAB>event_id<TAB>item_id<TAB>action<TAB>weight``, its
# score the effective event time. Identifiers never contain white space, so the tab is
# unambiguous; ``weight`` is empty when the event has none (the configured action weight applies
# at scoring time). Not JSON: Redis compares members byte for byte, and the same event must
# always give the same bytes so that a redelivered event changes nothing in the sorted set.
HISTORY_MEMBER_FORMAT: Final = "1"
_TAB: Final = "\t"


def encode_history_member(action: UserAction) -> bytes:
    """The ``hist`` sorted-set member of ``action``."""
    weight = "" if action.weight is None else repr(float(action.weight))
    fields = (HISTORY_MEMBER_FORMAT, action.event_id, action.item_id, action.action.value, weight)
    return _TAB.join(fields).encode()


def decode_history_member(member: bytes, ts: float) -> HistoryEntry:
    """Parse a member written by :func:`encode_history_member`; ``ValueError`` for anything else."""
    fields = member.decode().split(_TAB)
    if len(fields) != 5 or fields[0] != HISTORY_MEMBER_FORMAT:
        raise ValueError(f"not a history member of format {HISTORY_MEMBER_FORMAT}: {member[:80]!r}")
    _, event_id, item_id, action, weight = fields
    return HistoryEntry(
        event_id=event_id,
        item_id=item_id,
        action=ActionType(action),
        weight=float(weight) if weight else None,
        ts=ts,
    )


_ACTION_OF_VALUE: Final = {a.value: a for a in ActionType}


@dataclass(frozen=True, slots=True)
class HistoryColumns:
    """Many decoded ``hist`` members, column by column, in the order given."""

    item_ids: list[str]
    actions: list[ActionType]
    weights: list[float | None]
    ts: list[float]

    @staticmethod
    def empty() -> HistoryColumns:
        return HistoryColumns([], [], [], [])

    def __len__(self) -> int:
        return len(self.ts)


def decode_history(lines: bytes) -> HistoryColumns:
    """``member<TAB>score`` lines (newline-separated, what the worker's history script returns)
    decoded at once: one split for them all instead of a parse per member. ``ValueError`` when
    any line is not a member of :data:`HISTORY_MEMBER_FORMAT` (decode those one by one)."""
    if not lines:
        return HistoryColumns.empty()
    fields = lines.decode().replace("\n", _TAB).split(_TAB)
    if len(fields) != 6 * (lines.count(b"\n") + 1):
        raise ValueError("not lines of history members and scores")
    return _history_columns(fields, 6, [float(t) for t in fields[5::6]])


def decode_history_members(members: list[bytes], ts: list[float]) -> HistoryColumns:
    """Members (each scored by the same position of ``ts``) decoded at once, see above."""
    fields = b"\t".join(members).decode().split(_TAB) if members else []
    if len(fields) != 5 * len(members):
        raise ValueError("not history members")
    return _history_columns(fields, 5, ts)


def _history_columns(fields: list[str], stride: int, ts: list[float]) -> HistoryColumns:
    if any(f != HISTORY_MEMBER_FORMAT for f in fields[0::stride]):
        raise ValueError(f"not history members of format {HISTORY_MEMBER_FORMAT}")
    try:
        actions = [_ACTION_OF_VALUE[a] for a in fields[3::stride]]
    except KeyError as exc:
        raise ValueError(f"unknown action {exc}") from None
    weights = [float(w) if w else None for w in fields[4::stride]]
    return HistoryColumns(fields[2::stride], actions, weights, ts)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One remembered action (a decoded ``hist`` member): ``ts`` is its score, the effective
    event time in epoch seconds."""

    event_id: str
    item_id: str
    action: ActionType
    weight: float | None
    ts: float


# --------------------------------------------------------------------------- worker model control

MODEL_CONTROL_PATH: Final = "/v1/model"
# The worker's environment variable naming the model it loads at start: the controller's
# ``kubernetes`` target patches it into the worker Deployment (the source of truth of a rollout).
MODEL_URI_ENV: Final = "MODEL_URI"
# Beside it, the pin of that model: the sha256 of its manifest (``ModelPublished.manifest_sha256``).
MODEL_MANIFEST_SHA256_ENV: Final = "MODEL_MANIFEST_SHA256"


class ModelLoadRequest(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/model``: load this artifact (the worker answers 202, or 200 if it serves it);
    with ``manifest_sha256``, only if its manifest's bytes hash to it."""

    model_uri: Uri
    manifest_sha256: Sha256Hex | msgspec.UnsetType = msgspec.UNSET


class ModelLoadFailure(Struct, frozen=True, kw_only=True):
    """A worker's last failed load: which artifact, why, when."""

    model_uri: str
    error: str
    at: datetime


class WorkerModelState(Struct, frozen=True, kw_only=True):
    """What ``GET`` and ``POST /v1/model`` answer; ``None`` before the first model.

    Every field has a default, so that a reader tolerates a worker one version older or newer
    during a rollout (unknown fields are ignored).
    """

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
    # Inside a model directory, beside the artifact (not listed in its manifest).
    REPORT_JSON: Final = "evaluation.json"
    REPORT_PNG: Final = "evaluation.png"
    # Inside a snapshot directory; the leading "_" keeps the range out of interaction reads.
    SNAPSHOT_ACTIONS: Final = "actions.parquet"
    SNAPSHOT_RANGE: Final = "_range.json"

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
    def report(model_name: str, version: str, name: str) -> str:
        """``models/<model_name>/<version>/<name>``: the trainer's evaluation report
        (:attr:`REPORT_JSON`) or its plot (:attr:`REPORT_PNG`)."""
        return f"{ObjectLayout.model_dir(model_name, version)}/{name}"

    @staticmethod
    def snapshot_dir(topic: str, snapshot_id: str) -> str:
        """``snapshots/<topic>/<snapshot_id>``: an archived slice of a topic."""
        return f"{ObjectLayout.SNAPSHOTS}/{topic}/{snapshot_id}"

    @staticmethod
    def snapshot_file(topic: str, snapshot_id: str, name: str) -> str:
        """``snapshots/<topic>/<snapshot_id>/<name>``: the slice's events
        (:attr:`SNAPSHOT_ACTIONS`) or the offset ranges they came from (:attr:`SNAPSHOT_RANGE`)."""
        return f"{ObjectLayout.snapshot_dir(topic, snapshot_id)}/{name}"

    @staticmethod
    def snapshot_offsets(topic: str, group: str) -> str:
        """Where the trainer records up to which offsets it has archived ``topic``."""
        return f"{ObjectLayout.SNAPSHOTS}/{topic}/_offsets/{group}.json"


class ArchivedOffsets(Struct, kw_only=True, forbid_unknown_fields=True):
    """:meth:`ObjectLayout.snapshot_offsets`: the offset (per partition) up to which the trainer
    has archived ``topic``; the next snapshot starts there."""

    topic: str
    offsets: dict[int, int]


class SnapshotRange(Struct, kw_only=True, forbid_unknown_fields=True):
    """:attr:`ObjectLayout.SNAPSHOT_RANGE`: what a snapshot holds, per partition the offsets
    ``[start, end)``, with its event count and how many records were rejected."""

    topic: str
    offsets: dict[int, tuple[int, int]]
    events: int
    rejected: int
