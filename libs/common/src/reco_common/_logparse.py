"""Parsing one interaction or feature file (CSV/TSV, JSONL, Parquet, MovieLens ``u.data``).

The private half of :mod:`reco_common.interactions`. Each format is read by its pyarrow reader
into the file's own columns (:class:`_Raw`, which also knows how to name a row: ``line N`` or
Parquet ``row N``); then one set of column rules, whatever the format, maps the columns to ours,
converts and validates them, and every error names the file, the line (or row) and the column.
Rows are located after the fact: a vectorised validity mask, then its first bad index.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

USER_ID: Final = "user_id"
ITEM_ID: Final = "item_id"
WEIGHT: Final = "weight"
TS: Final = "ts"
ACTION: Final = "action"
EVENT_ID: Final = "event_id"
COLUMNS: Final = (USER_ID, ITEM_ID, WEIGHT, TS, ACTION, EVENT_ID)
_TEXT_IDS: Final = (USER_ID, ITEM_ID, EVENT_ID, ACTION)

# Names a file may use for our columns without a mapping, and the keys a mapping may use.
_ALIASES: Final = {"rating": WEIGHT, "timestamp": TS}
_MAPPING_KEYS: Final = {"user": USER_ID, "item": ITEM_ID, "timestamp": TS, "event": EVENT_ID}
_MOVIELENS_COLUMNS: Final = [USER_ID, ITEM_ID, WEIGHT, TS]
_MS_THRESHOLD: Final = 1e11  # epoch seconds this large would be after the year 5000
_NULL_TEXT: Final = pa.scalar(None, pa.string())


class InteractionsError(ValueError):
    """Interaction input that cannot be used; the message names file, line and column."""


class LogFormat(enum.StrEnum):
    CSV = "csv"
    TSV = "tsv"
    JSONL = "jsonl"
    PARQUET = "parquet"
    MOVIELENS = "movielens"


def column_map(mapping: Mapping[str, str] | str) -> dict[str, str]:
    """``{our column: the file's column}`` from ``{"user": "userId", "weight": "rating"}`` or
    the same as text, ``user=userId,weight=rating``.

    Our columns may be named ``user``/``user_id``, ``item``/``item_id``, ``weight``,
    ``timestamp``/``ts``, ``action``, ``event``/``event_id``; raise ``ValueError`` otherwise.
    """
    if isinstance(mapping, str):
        pairs = [p.partition("=") for p in mapping.split(",") if p.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"{mapping!r}: expected COLUMN=FILE_COLUMN pairs separated by commas")
        mapping = {key: source for key, _, source in pairs}
    resolved: dict[str, str] = {}
    for key, source in mapping.items():
        ours = _MAPPING_KEYS.get(key.strip().lower(), key.strip().lower())
        if ours not in COLUMNS or not source.strip():
            known = ", ".join(sorted({*COLUMNS, *_MAPPING_KEYS}))
            raise ValueError(f"{key}={source}: expected COLUMN=FILE_COLUMN, COLUMN one of {known}")
        resolved[ours] = source.strip()
    return resolved


def action_weight_map(values: Mapping[Any, float] | Sequence[str]) -> dict[str, float]:
    """``{action: weight}`` from a mapping or from ``ACTION=WEIGHT`` texts, e.g.
    ``["view=1", "purchase=5"]``; any action name the logs use is allowed (kept as written,
    compared exactly with the ``action`` column). Raise ``ValueError`` naming the bad entry: no
    ``=``, an empty name, a weight that is not a finite positive number.
    """
    pairs = (
        [(str(k), v) for k, v in values.items()]
        if isinstance(values, Mapping)
        else [_action_pair(text) for text in values]
    )
    weights: dict[str, float] = {}
    for name, raw in pairs:
        try:
            weight = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={raw}: the weight is not a number") from None
        if not name.strip():
            raise ValueError(f"{name}={raw}: the action name is empty")
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"{name}={raw}: the weight must be a positive number")
        weights[name.strip()] = weight
    return weights


def _action_pair(text: str) -> tuple[str, str]:
    name, sep, weight = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected ACTION=WEIGHT, e.g. purchase=5")
    return name, weight.strip()


@dataclass(frozen=True, slots=True)
class LogSchema:
    """How a file's columns become an interaction log.

    ``columns`` maps our columns to the file's (see :func:`column_map`; unmapped columns are
    found by name, ``rating``/``timestamp`` included); ``action_weights`` give each known action
    its weight; rows whose resolved weight is below ``min_weight`` are dropped.
    """

    action_weights: Mapping[str, float]
    columns: Mapping[str, str] = field(default_factory=dict)
    min_weight: float | None = None


# --------------------------------------------------------------------------- reading


@dataclass(slots=True)
class _Raw:
    """A file's own columns (several typed parts for a JSON field that mixes types), how to
    name a row in an error, and how to name the file's columns (``column`` or ``field``)."""

    uri: str
    columns: dict[str, list[pa.Array]]
    where: Callable[[int], str]
    header: Callable[[], str] = str  # where the column names are: "line 1", "" for Parquet
    noun: str = "column"
    labels: dict[str, str] = field(default_factory=dict)  # our column → how errors name it

    def error(self, row: int, column: str, why: str) -> InteractionsError:
        label = self.labels.get(column, repr(column))
        return InteractionsError(f"{self.uri}: {self.where(row)}, column {label}: {why}")

    def refuse_first(self, column: str, mask: pa.Array, why: Callable[[int], str]) -> None:
        """Raise for the first row where ``mask`` is true (null counts as false)."""
        hits = np.flatnonzero(_numpy(pc.fill_null(mask, False)))
        if hits.size:
            raise self.error(int(hits[0]), column, why(int(hits[0])))


def read_raw(uri: str, data: bytes, fmt: LogFormat) -> _Raw:
    """The columns of one file as its format's pyarrow reader gives them."""
    if fmt is LogFormat.PARQUET:
        return _read_parquet(uri, data)
    if fmt is LogFormat.JSONL:
        return _read_jsonl(uri, data)
    return _read_delimited(uri, data, fmt)


class _Lines:
    """1-based line numbers of the non-blank lines after ``skip`` lines: row → line."""

    def __init__(self, data: bytes, *, skip: int) -> None:
        self._data = data
        self._skip = skip

    @cached_property
    def numbers(self) -> npt.NDArray[np.int64]:
        raw = np.frombuffer(self._data, dtype=np.uint8)
        ink = ~np.isin(raw, list(b" \t\r\n"))
        ends = np.append(np.flatnonzero(raw == ord("\n")), raw.size)
        starts = np.concatenate(([0], ends[:-1] + 1))
        filled = np.zeros(starts.size, dtype=bool)
        some = ends > starts  # a segment from one non-empty line to the next has its ink only
        filled[some] = np.logical_or.reduceat(ink, starts[some]) if some.any() else []
        filled[: self._skip] = False
        return np.flatnonzero(filled) + 1

    def __call__(self, row: int) -> str:
        return f"line {self.numbers[row]}" if row < self.numbers.size else "end of file"


def _read_delimited(uri: str, data: bytes, fmt: LogFormat) -> _Raw:
    end = data.find(b"\n")
    first = data[: end if end >= 0 else len(data)].decode("utf-8", errors="replace").strip("\r")
    delimiter = "\t" if fmt in (LogFormat.TSV, LogFormat.MOVIELENS) or "\t" in first else ","
    header = [h.strip().strip('"') for h in first.split(delimiter)]
    skip = 1
    if fmt is LogFormat.MOVIELENS or _looks_like_movielens(first):
        header, skip = _MOVIELENS_COLUMNS, 0
    table = _read_csv(uri, data, delimiter=delimiter, header=header, skip=skip)
    columns = {name: [table.column(name)] for name in table.column_names}
    return _Raw(uri, columns, _Lines(data, skip=skip), header=lambda: "line 1")


def _looks_like_movielens(line: str) -> bool:
    fields = line.split("\t")
    return len(fields) == 4 and all(_is_number(f) for f in fields)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(uri: str, data: bytes, *, delimiter: str, header: list[str], skip: int) -> pa.Table:
    bad_rows: list[str] = []

    def on_invalid(row: Any) -> str:
        bad_rows.append(str(row.text))
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=skip),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InteractionsError(f"{uri}: unreadable as delimited text: {exc}") from None
    if bad_rows:
        number, text = _first_line_with(data, set(bad_rows))
        raise InteractionsError(
            f"{uri}: line {number}: expected {len(header)} fields separated by "
            f"{delimiter!r} ({', '.join(header)}), got {text[:200]!r}"
        )
    return table


def _first_line_with(data: bytes, texts: set[str]) -> tuple[int, str]:
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if line in texts or line.rstrip("\r") in texts:
            return number, line
    return 0, ""


def _read_jsonl(uri: str, data: bytes) -> _Raw:
    lines = _Lines(data, skip=0)
    try:
        table = pajson.read_json(io.BytesIO(data))
    except pa.ArrowInvalid:
        return _read_jsonl_by_line(uri, data, lines)  # a syntax error to locate, or mixed types
    dated = [n for n in table.column_names if pa.types.is_timestamp(table.schema.field(n).type)]
    if dated:  # strings that look like times: keep them as written (the rules decide)
        schema = pa.schema([(name, pa.string()) for name in dated])
        options = pajson.ParseOptions(explicit_schema=schema)
        table = pajson.read_json(io.BytesIO(data), parse_options=options)
    columns = {name: [table.column(name)] for name in table.column_names}
    return _Raw(uri, columns, lines, header=lambda: lines(0), noun="field")


def _read_jsonl_by_line(uri: str, data: bytes, lines: _Lines) -> _Raw:
    """The slow path: one JSON value per line, each field split into one array per JSON type."""
    parts: dict[str, dict[type, list[Any]]] = {}
    text = data.split(b"\n")
    for row, number in enumerate(lines.numbers.tolist()):
        record = _json_object(uri, text[number - 1], number)
        for key, value in record.items():
            if value is not None:
                kind = type(value) if isinstance(value, str | int | float | bool) else object
                slot = parts.setdefault(key, {}).setdefault(kind, [])
                slot.extend([None] * (row - len(slot)))
                slot.append(orjson.dumps(value) if kind is object else value)
    n = int(lines.numbers.size)
    columns = {
        key: [_typed(kind, values + [None] * (n - len(values))) for kind, values in kinds.items()]
        for key, kinds in parts.items()
    }
    return _Raw(uri, columns, lines, header=lambda: lines(0), noun="field")


def _json_object(uri: str, line: bytes, number: int) -> dict[str, Any]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InteractionsError(f"{uri}: line {number}: invalid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise InteractionsError(f"{uri}: line {number}: expected a JSON object per line")
    return record


def _typed(kind: type, values: list[Any]) -> pa.Array:
    types: dict[type, pa.DataType] = {str: pa.string(), bool: pa.bool_(), float: pa.float64()}
    if kind is int:
        return pa.array(values, pa.int64() if _fits_int64(values) else pa.float64())
    return pa.array(values, types.get(kind, pa.binary()))


def _fits_int64(values: list[Any]) -> bool:
    return all(v is None or -(2**63) <= v < 2**63 for v in values)


def _read_parquet(uri: str, data: bytes) -> _Raw:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InteractionsError(f"{uri}: not a readable Parquet file: {exc}") from None
    columns = {name: [table.column(name)] for name in table.column_names}
    return _Raw(uri, columns, lambda row: f"row {row + 1}")


# --------------------------------------------------------------------------- column rules


def interactions_table(raw: _Raw, schema: LogSchema) -> pa.Table:
    """The validated interactions of one file, weights resolved (see reco_common.interactions)."""
    if not raw.columns:
        return pa.table({USER_ID: pa.array([], pa.string()), ITEM_ID: pa.array([], pa.string())})
    columns: dict[str, pa.Array] = {}
    for ours, names in _resolve(raw, schema.columns).items():
        parts = [_convert(raw, ours, part) for name in names for part in raw.columns[name]]
        columns[ours] = parts[0] if len(parts) == 1 else pc.coalesce(*parts)
    return _finish(raw, columns, schema)


def _resolve(raw: _Raw, mapping: Mapping[str, str]) -> dict[str, list[str]]:
    """Our column → the file's columns holding it (in file order)."""
    found: dict[str, list[str]] = {}
    for name in raw.columns:
        ours = _ALIASES.get(name.lower(), name.lower())
        if ours in COLUMNS and ours not in mapping:
            found.setdefault(ours, []).append(name)
    by_lower = {name.lower(): name for name in reversed(raw.columns)}
    for ours, wanted in mapping.items():
        name = wanted if wanted in raw.columns else by_lower.get(wanted.lower(), "")
        if name:
            found[ours] = [name]
            raw.labels[ours] = f"{ours!r} ({raw.noun} {name!r} in the file)"
        elif ours in raw.columns:  # a file already in our layout (e.g. the topic archive)
            found[ours] = [ours]
        else:
            raise InteractionsError(
                f"{_at(raw)}no {raw.noun} {wanted!r} (mapped to {ours!r}) in {list(raw.columns)}"
            )
    missing = [c for c in (USER_ID, ITEM_ID) if c not in found]
    if len(missing) == 2 and raw.noun == "column" and raw.header():
        raise InteractionsError(
            f"{_at(raw)}no header naming {USER_ID!r} and {ITEM_ID!r} (and not the headerless "
            "MovieLens u.data layout: user, item, rating, timestamp; or map them: "
            "--columns user=…,item=…)"
        )
    if missing:
        raise InteractionsError(
            f"{_at(raw)}missing {raw.noun} {missing[0]!r} in {list(raw.columns)}"
        )
    return found


def _at(raw: _Raw) -> str:
    header = raw.header()
    return f"{raw.uri}: {header}: " if header else f"{raw.uri}: "


def _convert(raw: _Raw, column: str, values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = pc.cast(values, values.type.value_type)
    if pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    if column in _TEXT_IDS:
        return _ids(raw, column, values)
    if column == WEIGHT:
        return _numbers(raw, column, values)
    return _seconds(raw, column, values)


def _ids(raw: _Raw, column: str, values: pa.Array) -> pa.Array:
    kind = values.type
    if pa.types.is_integer(kind):
        return pc.cast(values, pa.string())
    if not pa.types.is_string(kind):
        _refuse_type(raw, column, values, "ids must be strings or integers")
        return pa.nulls(len(values), pa.string())
    text = pc.utf8_trim_whitespace(values)
    if column == ACTION:
        text = pc.utf8_lower(text)
    empty = pc.equal(text, "")
    if column in (USER_ID, ITEM_ID):
        raw.refuse_first(column, empty, lambda _: "empty id")
        return text
    return pc.if_else(empty, _NULL_TEXT, text)


def _refuse_type(raw: _Raw, column: str, values: pa.Array, rule: str) -> None:
    """Refuse the first value of a column whose type the rule does not accept (nulls pass)."""

    def why(row: int) -> str:
        value = values[row].as_py()
        shown = value.decode(errors="replace") if isinstance(value, bytes) else repr(value)
        return f"{shown}: {rule}, not {values.type}"

    raw.refuse_first(column, pc.is_valid(values), why)


def _numbers(raw: _Raw, column: str, values: pa.Array) -> pa.Array:
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        return pc.cast(values, pa.float64())
    if not pa.types.is_string(kind):
        _refuse_type(raw, column, values, "must be a number")
        return pa.nulls(len(values), pa.float64())
    text = _blank_to_null(values)
    try:
        return pc.cast(text, pa.float64())
    except pa.ArrowInvalid:
        bad = pa.array([v is not None and not _is_number(v) for v in text.to_pylist()])
        raw.refuse_first(column, bad, lambda row: f"{text[row].as_py()!r} is not a number")
        raise


def _blank_to_null(text: pa.Array) -> pa.Array:
    text = pc.utf8_trim_whitespace(text)
    return pc.if_else(pc.equal(text, ""), _NULL_TEXT, text)


def _seconds(raw: _Raw, column: str, values: pa.Array) -> pa.Array:
    kind = values.type
    if pa.types.is_timestamp(kind):
        return _timestamp_seconds(values)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        return _numeric_seconds(pc.cast(values, pa.float64()))
    if not pa.types.is_string(kind):
        _refuse_type(raw, column, values, "must be a timestamp, a number or an ISO 8601 string")
        return pa.nulls(len(values), pa.float64())
    text = _blank_to_null(values)
    try:
        return _numeric_seconds(pc.cast(text, pa.float64()))
    except pa.ArrowInvalid:
        pass
    zoned = pc.match_substring_regex(text, r"(Z|[+-]\d\d:?\d\d)$")
    try:
        utc = pc.cast(pc.if_else(zoned, text, _NULL_TEXT), pa.timestamp("us", tz="UTC"))
        naive = pc.cast(pc.if_else(zoned, _NULL_TEXT, text), pa.timestamp("us"))
    except pa.ArrowInvalid:  # mixed or unusual spellings: value by value, naming a bad one
        seconds = [_any_seconds(raw, column, row, v) for row, v in enumerate(text.to_pylist())]
        return pa.array(seconds, pa.float64())
    return pc.coalesce(_timestamp_seconds(utc), _timestamp_seconds(naive))


def _any_seconds(raw: _Raw, column: str, row: int, value: str | None) -> float | None:
    if value is None:
        return None
    if _is_number(value):
        seconds = float(value)
        return seconds / 1000.0 if abs(seconds) > _MS_THRESHOLD else seconds
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise raw.error(
            row, column, f"{value!r} is neither epoch seconds/milliseconds nor an ISO 8601 time"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _numeric_seconds(values: pa.Array) -> pa.Array:
    is_ms = pc.greater(pc.abs(values), _MS_THRESHOLD)
    return pc.if_else(is_ms, pc.divide(values, 1000.0), values)


def _timestamp_seconds(values: pa.Array) -> pa.Array:
    micros = pc.cast(pc.cast(values, pa.timestamp("us", tz=values.type.tz)), pa.int64())
    return pc.divide(pc.cast(micros, pa.float64()), 1e6)


def _finish(raw: _Raw, columns: dict[str, pa.Array], schema: LogSchema) -> pa.Table:
    for required in (USER_ID, ITEM_ID):
        raw.refuse_first(required, pc.is_null(columns[required]), lambda _: "missing id")
    if TS in columns:
        raw.refuse_first(TS, pc.is_null(columns[TS]), lambda _: "missing timestamp")
    known = pa.array(list(schema.action_weights), pa.string())
    action = columns.get(ACTION)
    if action is not None:
        unknown = pc.and_(pc.is_valid(action), pc.invert(pc.is_in(action, value_set=known)))
        raw.refuse_first(
            ACTION,
            unknown,
            lambda row: (
                f"unknown action {action[row].as_py()!r} "
                f"(known: {', '.join(schema.action_weights)})"
            ),
        )
    columns[WEIGHT] = _resolve_weights(raw, columns, schema.action_weights)
    table = pa.table({name: columns[name] for name in COLUMNS if name in columns})
    if schema.min_weight is None:
        return table
    return table.filter(pc.greater_equal(table.column(WEIGHT), schema.min_weight))


def _resolve_weights(
    raw: _Raw, columns: dict[str, pa.Array], weights: Mapping[str, float]
) -> pa.Array:
    """A row's ``weight`` when given, else its action's weight, else 1 (float32, > 0)."""
    explicit = columns.get(WEIGHT)
    action = columns.get(ACTION)
    resolved: pa.Array = pa.array(np.ones(len(columns[USER_ID]), dtype=np.float64))
    if action is not None:
        mapped = pc.index_in(action, value_set=pa.array(list(weights), pa.string()))
        resolved = pc.fill_null(
            pc.take(pa.array(list(weights.values()), pa.float64()), mapped), 1.0
        )
    if explicit is not None:
        resolved = pc.fill_null(explicit, resolved)
    values = np.asarray(_numpy(resolved), dtype=np.float64)
    raw.refuse_first(
        WEIGHT,
        pa.array(~np.isfinite(values) | (values <= 0)),
        lambda row: f"weight must be a finite number > 0, got {values[row]}",
    )
    return pa.array(values.astype(np.float32))


def _numpy(values: pa.Array | pa.ChunkedArray) -> npt.NDArray[Any]:
    return np.asarray(values.to_numpy(zero_copy_only=False))


# --------------------------------------------------------------------------- features


def feature_table(raw: _Raw, id_column: str) -> pa.Table:
    """One feature file as string columns (empty text is null); ``id_column`` required."""
    if id_column not in raw.columns:
        raise InteractionsError(f"{raw.uri}: missing column {id_column!r} in {list(raw.columns)}")
    columns = {name: _feature_text(parts) for name, parts in raw.columns.items()}
    raw.refuse_first(id_column, pc.is_null(columns[id_column]), lambda _: "missing id")
    return pa.table(columns)


def _feature_text(parts: Sequence[pa.Array]) -> pa.Array:
    texts = [_blank_to_null(pc.cast(part, pa.string())) for part in parts]
    return texts[0] if len(texts) == 1 else pc.coalesce(*texts)
