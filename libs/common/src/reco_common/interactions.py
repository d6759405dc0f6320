"""Interaction logs: read CSV/TSV, JSONL, Parquet and MovieLens ``u.data`` into one columnar shape.

A location is a plain path, a ``file://`` URI or an ``s3://`` URI, naming one file or a
directory / prefix (then every supported file below it is read, in name order; names starting
with ``_`` or ``.`` are skipped). The format follows the file name (``.csv``, ``.tsv``,
``.jsonl``/``.ndjson``, ``.parquet``, ``u.data``/``.data``; a ``.gz`` suffix is decompressed).

Columns of the files: ``user_id`` and ``item_id`` (required; ids are strings, integers are
accepted and turned into strings), ``weight`` or ``rating`` (optional), ``timestamp`` or ``ts``
(optional: epoch seconds, epoch milliseconds when above 1e11, ISO 8601 where a missing zone
means UTC, or a Parquet timestamp), ``action`` (optional: any name the action weights know;
by default view/click/cart/purchase) and ``event_id`` (optional). Files that name them
otherwise are read with a column map (``columns={"user": "userId", …}``, see
:func:`column_map`). A row's weight is its ``weight`` (or ``rating``) when given, else the
weight of its action, else 1; ``min_weight`` drops the rows below it. Malformed input raises
:class:`InteractionsError` naming the file, the line (or Parquet row) and the column.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Final
from urllib.parse import urlparse

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from reco_common._logparse import (
    ACTION,
    EVENT_ID,
    ITEM_ID,
    TS,
    USER_ID,
    WEIGHT,
    InteractionsError,
    LogFormat,
    LogSchema,
    action_weight_map,
    column_map,
    feature_table,
    interactions_table,
    read_raw,
)
from reco_common.contracts import DEFAULT_ACTION_WEIGHTS, UserAction
from reco_common.settings import S3Settings
from reco_common.storage import ObjectStore, as_uri, open_store

__all__ = [
    "ACTION",
    "EVENT_ID",
    "ITEM_ID",
    "TS",
    "USER_ID",
    "WEIGHT",
    "Features",
    "Interactions",
    "InteractionsError",
    "LogFormat",
    "LogSchema",
    "LogSource",
    "action_weight_map",
    "actions_table",
    "column_map",
    "encode_log",
    "format_of",
    "is_log_file",
    "read_features",
    "read_interactions",
    "write_log",
]

logger = logging.getLogger(__name__)

_SUFFIXES: Final = {
    ".csv": LogFormat.CSV,
    ".tsv": LogFormat.TSV,
    ".tab": LogFormat.TSV,
    ".jsonl": LogFormat.JSONL,
    ".ndjson": LogFormat.JSONL,
    ".parquet": LogFormat.PARQUET,
    ".pq": LogFormat.PARQUET,
    ".data": LogFormat.MOVIELENS,
}


def format_of(name: str) -> LogFormat:
    """The format a file name implies (``.gz`` ignored); raise for an unknown suffix."""
    path = PurePosixPath(name.removesuffix(".gz"))
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_SUFFIXES))
        raise InteractionsError(f"{name}: unknown interaction file type (known: {known}, u.data)")
    return fmt


@dataclass(frozen=True, slots=True)
class LogSource:
    """One file that was read: where, its sha256 (of its bytes, decompressed) and its row count."""

    uri: str
    sha256: str
    rows: int


@dataclass(frozen=True, slots=True)
class Interactions:
    """A columnar interaction log, sorted by time when every row has a timestamp.

    ``table`` columns: ``user_id`` and ``item_id`` (string), ``weight`` (float32, > 0), and,
    when known for every row, ``ts`` (float64 epoch seconds), ``action`` and ``event_id``
    (string, may be null).
    """

    table: pa.Table
    sources: tuple[LogSource, ...]

    def __len__(self) -> int:
        return int(self.table.num_rows)

    @property
    def has_timestamps(self) -> bool:
        return TS in self.table.column_names

    def user_ids(self) -> pa.ChunkedArray:
        return self.table.column(USER_ID)

    def item_ids(self) -> pa.ChunkedArray:
        return self.table.column(ITEM_ID)

    def weights(self) -> npt.NDArray[np.float32]:
        return np.asarray(self.table.column(WEIGHT).to_numpy(), dtype=np.float32)

    def timestamps(self) -> npt.NDArray[np.float64]:
        """Epoch seconds; raise when the log has no timestamps."""
        if not self.has_timestamps:
            raise InteractionsError("the interaction log has no timestamps")
        return np.asarray(self.table.column(TS).to_numpy(), dtype=np.float64)

    def take(self, indices: npt.NDArray[np.integer[Any]] | npt.NDArray[np.bool_]) -> Interactions:
        """The rows at ``indices`` (or where the mask is true), in that order."""
        if indices.dtype == np.bool_:
            return Interactions(self.table.filter(pa.array(indices)), self.sources)
        return Interactions(self.table.take(pa.array(indices)), self.sources)


# --------------------------------------------------------------------------- reading


def read_interactions(
    locations: str | Sequence[str],
    *,
    action_weights: Mapping[str, float] | None = None,
    columns: Mapping[str, str] | None = None,
    min_weight: float | None = None,
    s3: S3Settings | None = None,
    fmt: LogFormat | None = None,
) -> Interactions:
    """Read and concatenate every file at ``locations``; sort by time when timestamps exist.

    ``action_weights`` maps action names to weights (default: the contracts' defaults);
    ``columns`` maps our columns to the files' (e.g. ``{"user": "userId"}``, see
    :func:`column_map`); rows weighing less than ``min_weight`` are dropped; ``fmt`` forces a
    format instead of guessing it from each file name.
    """
    schema = LogSchema(
        action_weights=action_weight_map(action_weights or DEFAULT_ACTION_WEIGHTS),
        columns=column_map(columns or {}),
        min_weight=min_weight,
    )
    parts: list[pa.Table] = []
    sources: list[LogSource] = []
    for location in [locations] if isinstance(locations, str) else locations:
        for uri, data in _fetch(location, s3=s3):
            table = interactions_table(read_raw(uri, data, fmt or format_of(uri)), schema)
            parts.append(table)
            sources.append(LogSource(uri=uri, sha256=_sha256(data), rows=table.num_rows))
    if not parts:
        raise InteractionsError("no interaction locations given")
    table = _concat(parts, [s.uri for s in sources])
    if table.num_rows == 0:
        raise InteractionsError(f"{', '.join(s.uri for s in sources)}: no interactions")
    if TS in table.column_names:
        order = np.argsort(table.column(TS).to_numpy(), kind="stable")
        table = table.take(pa.array(order))
    return Interactions(table=table, sources=tuple(sources))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _split_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    path = parsed.path.rstrip("/")
    parent, _, name = path.rpartition("/")
    return f"{parsed.scheme}://{parsed.netloc}{parent}", name


def _fetch(location: str, *, s3: S3Settings | None) -> Iterable[tuple[str, bytes]]:
    """``(uri, bytes)`` of the file at ``location``, or of every supported file below it."""
    uri = as_uri(location).rstrip("/")
    parent, name = _split_uri(uri)
    folder = open_store(parent, s3=s3)
    if name and folder.exists(name):
        yield uri, _decompress(uri, folder.get_bytes(name))
        return
    store = open_store(uri, s3=s3)
    keys = [k for k in store.list() if is_log_file(k)]
    if not keys:
        raise InteractionsError(f"{uri}: no interaction files there")
    for key in keys:
        yield store.uri(key), _decompress(key, store.get_bytes(key))


def is_log_file(key: str) -> bool:
    """Whether a directory read picks ``key`` up: a known suffix, no ``_``/``.`` component."""
    parts = PurePosixPath(key).parts
    if any(p.startswith(("_", ".")) for p in parts):
        return False
    name = parts[-1].removesuffix(".gz")
    return PurePosixPath(name).suffix.lower() in _SUFFIXES


def _decompress(name: str, data: bytes) -> bytes:
    if not name.endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise InteractionsError(f"{name}: not a valid gzip file: {exc}") from None


def _concat(parts: list[pa.Table], uris: list[str]) -> pa.Table:
    common = set.intersection(*(set(t.column_names) for t in parts))
    if TS not in common and any(TS in t.column_names for t in parts):
        missing = [u for u, t in zip(uris, parts, strict=True) if TS not in t.column_names]
        logger.warning("timestamps dropped: %s have none", ", ".join(missing))
    order = [c for c in (USER_ID, ITEM_ID, WEIGHT, TS, ACTION, EVENT_ID) if c in common]
    return pa.concat_tables([t.select(order) for t in parts])


# --------------------------------------------------------------------------- features


@dataclass(frozen=True, slots=True)
class Features:
    """A feature table: ``id_column`` plus one string column per feature (null: none)."""

    table: pa.Table
    id_column: str
    sources: tuple[LogSource, ...]


def read_features(
    location: str, *, id_column: str, s3: S3Settings | None = None, fmt: LogFormat | None = None
) -> Features:
    """Features (e.g. ``item_id``, ``category``) from CSV/TSV/JSONL/Parquet files.

    Every column becomes a string column (empty text becomes null); ``id_column`` must be
    present and non-empty on every row.
    """
    parts = []
    sources = []
    for uri, data in _fetch(location, s3=s3):
        file_format = fmt or format_of(uri)
        if file_format is LogFormat.MOVIELENS:
            raise InteractionsError(f"{uri}: features must be CSV, TSV, JSONL or Parquet")
        table = feature_table(read_raw(uri, data, file_format), id_column)
        parts.append(table)
        sources.append(LogSource(uri=uri, sha256=_sha256(data), rows=table.num_rows))
    table = pa.concat_tables(parts, promote_options="permissive")
    if table.num_rows == 0:
        raise InteractionsError(f"{location}: no feature rows")
    return Features(table=table, id_column=id_column, sources=tuple(sources))


# --------------------------------------------------------------------------- writing


def actions_table(actions: Iterable[UserAction]) -> pa.Table:
    """The raw log of ``actions``: ``event_id``, ``user_id``, ``item_id``, ``action``,
    ``weight`` (null unless the event overrides it) and ``ts`` (epoch seconds)."""
    rows = [
        (a.event_id, a.user_id, a.item_id, a.action.value, a.weight, a.ts.timestamp())
        for a in actions
    ]
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), (), (), ()]
    return pa.table(
        {
            EVENT_ID: pa.array(columns[0], pa.string()),
            USER_ID: pa.array(columns[1], pa.string()),
            ITEM_ID: pa.array(columns[2], pa.string()),
            ACTION: pa.array(columns[3], pa.string()),
            WEIGHT: pa.array(columns[4], pa.float64()),
            TS: pa.array(columns[5], pa.float64()),
        }
    )


def write_log(
    table: pa.Table, location: str, *, fmt: LogFormat | None = None, s3: S3Settings | None = None
) -> str:
    """Write a log table as one file (format from the name unless ``fmt``); return its URI.

    ``ts`` (epoch seconds) is written as a UTC timestamp in Parquet and as a number in text.
    """
    uri = as_uri(location)
    fmt = fmt or format_of(uri)
    data = encode_log(table, fmt)
    if uri.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    parent, name = _split_uri(uri)
    store: ObjectStore = open_store(parent, s3=s3)
    store.put_bytes(name, data)
    return uri


def encode_log(table: pa.Table, fmt: LogFormat) -> bytes:
    """The bytes of ``table`` as one ``fmt`` file (see :func:`write_log`)."""
    sink = io.BytesIO()
    if fmt is LogFormat.PARQUET:
        if TS in table.column_names:
            micros = pc.cast(pc.round(pc.multiply(table.column(TS), 1e6)), pa.int64())
            ts = pc.cast(micros, pa.timestamp("us", tz="UTC"))
            table = table.set_column(table.column_names.index(TS), TS, ts)
        pq.write_table(table, sink, compression="zstd")
    elif fmt is LogFormat.JSONL:
        for row in table.to_pylist():
            sink.write(orjson.dumps({k: v for k, v in row.items() if v is not None}))
            sink.write(b"\n")
    elif fmt is LogFormat.MOVIELENS:
        raise InteractionsError("writing the MovieLens layout is not supported; use csv or tsv")
    else:
        delimiter = "\t" if fmt is LogFormat.TSV else ","
        pacsv.write_csv(
            table,
            sink,
            write_options=pacsv.WriteOptions(delimiter=delimiter, quoting_style="needed"),
        )
    return sink.getvalue()
