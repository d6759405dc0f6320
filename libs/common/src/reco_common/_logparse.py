"""Parsing one interaction or feature file (CSV/TSV, JSONL, Parquet, MovieLens ``u.data``).

The private half of :mod:`reco_common.interactions`: bytes in, a validated Arrow table out,
and every error names the file, the line (Parquet: row) and the column.
"""

from __future__ import annotations

import enum
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

USER_ID: Final = "user_id"
ITEM_ID: Final = "item_id"
WEIGHT: Final = "weight"
TS: Final = "ts"
ACTION: Final = "action"
EVENT_ID: Final = "event_id"

_ALIASES: Final = {"rating": WEIGHT, "timestamp": TS}
_MOVIELENS_COLUMNS: Final = [USER_ID, ITEM_ID, WEIGHT, TS]
_MS_THRESHOLD: Final = 1e11  # epoch seconds this large would be after the year 5000


class InteractionsError(ValueError):
    """Interaction input that cannot be used; the message names file, line and column."""


class LogFormat(enum.StrEnum):
    CSV = "csv"
    TSV = "tsv"
    JSONL = "jsonl"
    PARQUET = "parquet"
    MOVIELENS = "movielens"


def parse(uri: str, data: bytes, fmt: LogFormat, weights: Mapping[str, float]) -> pa.Table:
    """The validated interactions of one file, weights resolved (see reco_common.interactions)."""
    if fmt is LogFormat.PARQUET:
        raw = _parse_parquet(uri, data)
    elif fmt is LogFormat.JSONL:
        raw = _parse_jsonl(uri, data)
    else:
        raw = _parse_delimited(uri, data, fmt)
    return _finish(raw, weights)


@dataclass(slots=True)
class _Raw:
    """Columns of one file before validation, and how to name a row in an error."""

    uri: str
    columns: dict[str, pa.Array]
    where: Callable[[int], str]

    def error(self, row: int, column: str, why: str) -> InteractionsError:
        return InteractionsError(f"{self.uri}: {self.where(row)}, column {column!r}: {why}")


# --------------------------------------------------------------------------- delimited text


def _parse_delimited(uri: str, data: bytes, fmt: LogFormat) -> _Raw:
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip("\r")
    delimiter = "\t" if fmt in (LogFormat.TSV, LogFormat.MOVIELENS) or "\t" in first else ","
    header = [_canonical(h.strip().strip('"')) for h in first.split(delimiter)]
    has_header = USER_ID in header or ITEM_ID in header
    if not has_header and _looks_like_movielens(first):
        header = _MOVIELENS_COLUMNS
    elif not has_header:
        raise InteractionsError(
            f"{uri}: line 1: no header naming {USER_ID!r} and {ITEM_ID!r} "
            "(and not the headerless MovieLens u.data layout: user, item, rating, timestamp)"
        )
    for required in (USER_ID, ITEM_ID):
        if required not in header:
            raise InteractionsError(f"{uri}: line 1: missing column {required!r} in {header}")
    table = _read_csv(uri, data, delimiter=delimiter, header=header, skip=1 if has_header else 0)
    line_of = _LineIndex(data, skip=1 if has_header else 0)
    raw = _Raw(uri, {}, lambda row: f"line {line_of(row)}")
    for name in table.column_names:
        strings = pc.utf8_trim_whitespace(table.column(name).combine_chunks())
        raw.columns[name] = _convert_text(raw, name, strings)
    return raw


def _canonical(name: str) -> str:
    return _ALIASES.get(name.lower(), name.lower())


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
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InteractionsError(f"{uri}: unreadable as delimited text: {exc}") from None
    if bad_rows:
        line = _first_line_with(data, set(bad_rows))
        raise InteractionsError(
            f"{uri}: line {line}: expected {len(header)} fields separated by "
            f"{delimiter!r} ({', '.join(header)}), got {_line_text(data, line)!r}"
        )
    return table


def _first_line_with(data: bytes, texts: set[str]) -> int:
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if line in texts or line.rstrip("\r") in texts:
            return number
    return 0


def _line_text(data: bytes, line: int) -> str:
    """The text of 1-based ``line`` of ``data`` (for error messages)."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[line - 1][:200] if 0 < line <= len(lines) else ""


class _LineIndex:
    """Maps a data row (0-based) to its 1-based line, skipping the header and blank lines."""

    def __init__(self, data: bytes, *, skip: int) -> None:
        self._data = data
        self._skip = skip

    def __call__(self, row: int) -> int:
        seen = -1
        for number, line in enumerate(self._data.split(b"\n"), 1):
            if number <= self._skip or not line.strip():
                continue
            seen += 1
            if seen == row:
                return number
        return 0


def _convert_text(raw: _Raw, name: str, strings: pa.Array) -> pa.Array:
    if name in (USER_ID, ITEM_ID, EVENT_ID, ACTION):
        if name == ACTION:
            strings = pc.utf8_lower(strings)
        empty = pc.equal(pc.utf8_length(strings), 0)
        if name in (USER_ID, ITEM_ID):
            _refuse_first(raw, name, empty, "empty id")
            return strings
        return pc.if_else(empty, pa.scalar(None, pa.string()), strings)
    if name == WEIGHT:
        return _to_float(raw, name, strings)
    if name == TS:
        return _to_seconds(raw, name, strings)
    return strings


def _refuse_first(raw: _Raw, column: str, mask: pa.Array, why: str) -> None:
    hits = np.flatnonzero(np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False)))
    if hits.size:
        raise raw.error(int(hits[0]), column, why)


def _to_float(raw: _Raw, column: str, strings: pa.Array) -> pa.Array:
    present = pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)
    try:
        return pc.cast(present, pa.float64())
    except pa.ArrowInvalid:
        values = present.to_pylist()
        for row, value in enumerate(values):
            if value is not None and not _is_number(value):
                raise raw.error(row, column, f"{value!r} is not a number") from None
        raise


def _to_seconds(raw: _Raw, column: str, strings: pa.Array) -> pa.Array:
    present = pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)
    try:
        return _numeric_seconds(pc.cast(present, pa.float64()))
    except pa.ArrowInvalid:
        pass
    for unit in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            return _timestamp_seconds(pc.cast(present, unit))
        except pa.ArrowInvalid:
            continue
    values = [
        None if v is None else _iso_seconds(raw, row, column, v)
        for row, v in enumerate(present.to_pylist())
    ]
    return pa.array(values, pa.float64())


def _iso_seconds(raw: _Raw, row: int, column: str, value: Any) -> float:
    if isinstance(value, str) and _is_number(value):
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        return seconds / 1000.0 if abs(seconds) > _MS_THRESHOLD else seconds
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    raise raw.error(
        row, column, f"{value!r} is neither epoch seconds/milliseconds nor an ISO 8601 time"
    )


def _numeric_seconds(values: pa.Array) -> pa.Array:
    is_ms = pc.greater(pc.abs(values), _MS_THRESHOLD)
    return pc.if_else(is_ms, pc.divide(values, 1000.0), values)


def _timestamp_seconds(values: pa.Array) -> pa.Array:
    micros = pc.cast(pc.cast(values, pa.timestamp("us", tz=values.type.tz)), pa.int64())
    return pc.divide(pc.cast(micros, pa.float64()), 1e6)


# --------------------------------------------------------------------------- JSONL


def _parse_jsonl(uri: str, data: bytes) -> _Raw:
    lines, records = _json_objects(uri, data)
    raw = _Raw(uri, {}, lambda row: f"line {lines[row]}")
    values: dict[str, list[Any]] = {}
    for seen, record in enumerate(records, 1):
        for key, value in record.items():
            values.setdefault(_canonical(key), [None] * (seen - 1)).append(value)
        for column in values.values():
            if len(column) < seen:
                column.append(None)
    for required in (USER_ID, ITEM_ID):
        if lines and required not in values:
            raise InteractionsError(f"{uri}: line {lines[0]}: missing field {required!r}")
    for name, column in values.items():
        raw.columns[name] = _convert_json(raw, name, column)
    return raw


def _json_objects(uri: str, data: bytes) -> tuple[list[int], list[dict[str, Any]]]:
    """The JSON object on each non-blank line, with its 1-based line number."""
    lines: list[int] = []
    records: list[dict[str, Any]] = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InteractionsError(f"{uri}: line {number}: invalid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise InteractionsError(f"{uri}: line {number}: expected a JSON object per line")
        lines.append(number)
        records.append(record)
    return lines, records


def _convert_json(raw: _Raw, name: str, column: list[Any]) -> pa.Array:
    if name in (USER_ID, ITEM_ID, EVENT_ID, ACTION):
        out: list[str | None] = []
        for row, value in enumerate(column):
            if isinstance(value, str) and value.strip():
                out.append(value.strip().lower() if name == ACTION else value.strip())
            elif isinstance(value, int) and not isinstance(value, bool):
                out.append(str(value))
            elif value is None and name not in (USER_ID, ITEM_ID):
                out.append(None)
            else:
                raise raw.error(row, name, f"{value!r} is not an id (a non-empty string or int)")
        return pa.array(out, pa.string())
    if name == WEIGHT:
        floats: list[float | None] = []
        for row, value in enumerate(column):
            if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
                floats.append(value)
            elif isinstance(value, str) and _is_number(value):
                floats.append(float(value))
            else:
                raise raw.error(row, name, f"{value!r} is not a number")
        return pa.array(floats, pa.float64())
    if name == TS:
        seconds = [
            None if v is None else _iso_seconds(raw, row, name, v) for row, v in enumerate(column)
        ]
        return pa.array(seconds, pa.float64())
    return pa.array([None if v is None else str(v) for v in column], pa.string())


# --------------------------------------------------------------------------- Parquet


def _parse_parquet(uri: str, data: bytes) -> _Raw:
    table = _parse_parquet_table(uri, data)
    raw = _Raw(uri, {}, lambda row: f"row {row + 1}")
    names = {_canonical(n): n for n in table.column_names}
    for required in (USER_ID, ITEM_ID):
        if required not in names:
            raise InteractionsError(f"{uri}: missing column {required!r} in {table.column_names}")
    for name, original in names.items():
        raw.columns[name] = _convert_parquet(raw, name, table.column(original).combine_chunks())
    return raw


def _convert_parquet(raw: _Raw, name: str, values: pa.Array) -> pa.Array:
    kind = values.type
    if name in (USER_ID, ITEM_ID, EVENT_ID, ACTION):
        if not (
            pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
        ):
            raise raw.error(0, name, f"ids must be strings or integers, not {kind}")
        strings = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
        if name in (USER_ID, ITEM_ID):
            _refuse_first(raw, name, pc.is_null(strings), "missing id")
        return _convert_text(raw, name, pc.fill_null(strings, ""))
    if name == WEIGHT:
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise raw.error(0, name, f"must be numeric, not {kind}")
        return pc.cast(values, pa.float64())
    if name == TS:
        if pa.types.is_timestamp(kind):
            return _timestamp_seconds(values)
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            return _numeric_seconds(pc.cast(values, pa.float64()))
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return _to_seconds(raw, name, pc.fill_null(pc.cast(values, pa.string()), ""))
        raise raw.error(0, name, f"must be a timestamp, a number or an ISO string, not {kind}")
    return values


# --------------------------------------------------------------------------- validation


def _finish(raw: _Raw, weights: Mapping[str, float]) -> pa.Table:
    cols = raw.columns
    n = len(cols[USER_ID])
    action = cols.get(ACTION)
    if action is not None:
        known = pc.is_in(action, value_set=pa.array(list(weights), pa.string()))
        unknown = pc.and_(pc.is_valid(action), pc.invert(pc.fill_null(known, False)))
        _refuse_first(raw, ACTION, unknown, f"unknown action (known: {', '.join(weights)})")
    weight = _resolve_weights(raw, n, weights)
    out = {USER_ID: cols[USER_ID], ITEM_ID: cols[ITEM_ID], WEIGHT: weight}
    if TS in cols:
        _refuse_first(raw, TS, pc.is_null(cols[TS]), "missing timestamp")
        out[TS] = cols[TS]
    for name in (ACTION, EVENT_ID):
        if name in cols:
            out[name] = cols[name]
    return pa.table(out)


def _resolve_weights(raw: _Raw, n: int, weights: Mapping[str, float]) -> pa.Array:
    explicit = raw.columns.get(WEIGHT)
    action = raw.columns.get(ACTION)
    fallback: pa.Array = pa.array(np.ones(n, dtype=np.float64))
    if action is not None:
        mapped = pc.index_in(action, value_set=pa.array(list(weights), pa.string()))
        table = pa.array(list(weights.values()), pa.float64())
        fallback = pc.fill_null(pc.take(table, mapped), 1.0)
    resolved = fallback if explicit is None else pc.fill_null(explicit, fallback)
    values = np.asarray(resolved.to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
    if bad.size:
        row = int(bad[0])
        raise raw.error(row, WEIGHT, f"weight must be a finite number > 0, got {values[row]}")
    return pa.array(values.astype(np.float32))


# --------------------------------------------------------------------------- features


def feature_table(uri: str, data: bytes, fmt: LogFormat, id_column: str) -> pa.Table:
    """One feature file as string columns (empty text is null); ``id_column`` required."""
    if fmt is LogFormat.PARQUET:
        table = _parse_parquet_table(uri, data)
        where: Callable[[int], str] = lambda row: f"row {row + 1}"  # noqa: E731
    elif fmt is LogFormat.JSONL:
        lines, records = _json_objects(uri, data)
        table = pa.Table.from_pylist([{k: _text(v) for k, v in r.items()} for r in records])
        where = lambda row: f"line {lines[row]}"  # noqa: E731
    elif fmt in (LogFormat.CSV, LogFormat.TSV):
        first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip("\r")
        delimiter = "\t" if fmt is LogFormat.TSV or "\t" in first else ","
        header = [h.strip().strip('"') for h in first.split(delimiter)]
        table = _read_csv(uri, data, delimiter=delimiter, header=header, skip=1)
        line_of = _LineIndex(data, skip=1)
        where = lambda row: f"line {line_of(row)}"  # noqa: E731
    else:
        raise InteractionsError(f"{uri}: features must be CSV, TSV, JSONL or Parquet")
    if id_column not in table.column_names:
        raise InteractionsError(f"{uri}: missing column {id_column!r} in {table.column_names}")
    columns = {}
    for name in table.column_names:
        text = pc.utf8_trim_whitespace(pc.cast(table.column(name), pa.string()))
        columns[name] = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    raw = _Raw(uri, {}, where)
    _refuse_first(raw, id_column, pc.is_null(columns[id_column]), "missing id")
    return pa.table(columns)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_parquet_table(uri: str, data: bytes) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InteractionsError(f"{uri}: not a readable Parquet file: {exc}") from None
