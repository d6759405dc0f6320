"""Deterministic model versions: the same data and parameters always give the same version.

The data fingerprint hashes the *content* of every input file (not its location or time of
reading), so a CronJob that runs twice on the same snapshot computes the same version, finds
the artifact already there, and publishes nothing new.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from reco_common.artifact import ARTIFACT_FORMAT
from reco_common.interactions import LogSource

_HASH_CHARS = 12


def data_fingerprint(
    sources: Sequence[LogSource], *, reading: Mapping[str, Any] | None = None
) -> str:
    """``sha256:<hex>`` over the sorted content digests and row counts of ``sources``, and how
    they were read (a column map, a threshold) when that is not as they are."""
    parts = sorted(f"{s.sha256}:{s.rows}" for s in sources)
    if reading:
        parts.append(json.dumps(reading, sort_keys=True, separators=(",", ":")))
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def model_version(*, data: str, params: dict[str, Any], newest_ts: float | None) -> str:
    """``<YYYYMMDD of the newest interaction>-<hash>`` (just the hash without timestamps)."""
    identity = json.dumps(
        {"format": ARTIFACT_FORMAT, "data": data, "params": params},
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = hashlib.sha256(identity.encode()).hexdigest()[:_HASH_CHARS]
    if newest_ts is None:
        return digest
    return f"{datetime.fromtimestamp(newest_ts, tz=UTC):%Y%m%d}-{digest}"
