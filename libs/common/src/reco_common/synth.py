"""The synthetic shop: realistic interaction logs with known structure, deterministic by seed.

Items belong to categories (the taste clusters) and have power-law popularity. Each user has a
primary and a secondary taste; shoppers act in sessions spread over ``days``, each session
browsing one of the user's tastes, with some off-taste noise drawn from global popularity.
Actions follow a funnel (view > click > cart > purchase) with more intent on-taste. With
``drift > 0`` that fraction of users switches primary taste at a random time in the middle of
the period, which a model trained on old data cannot know.

Everything is vectorised numpy: 1M interactions take about a second.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from reco_common.contracts import ActionType, UserAction
from reco_common.interactions import (
    ACTION,
    EVENT_ID,
    ITEM_ID,
    TS,
    USER_ID,
    LogFormat,
    write_log,
)
from reco_common.settings import S3Settings
from reco_common.storage import as_uri

CATEGORY: Final = "category"
MIN_INTERACTIONS: Final = 1_000
MAX_INTERACTIONS: Final = 20_000_000
_ACTIONS: Final = [ActionType.VIEW, ActionType.CLICK, ActionType.CART, ActionType.PURCHASE]
# Funnel probabilities on-taste and off-taste: intent is higher for what the user likes.
_ON_TASTE: Final = (0.62, 0.24, 0.09, 0.05)
_OFF_TASTE: Final = (0.85, 0.12, 0.02, 0.01)
_SECONDARY_SHARE: Final = 0.3
_SECONDS_PER_DAY: Final = 86_400.0
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ShopConfig:
    """The shape of the shop. ``n_users`` / ``n_items`` default to sizes that scale with
    ``n_interactions`` (about 25 interactions per user, 100 per item, at most 50k items)."""

    n_interactions: int = 100_000
    n_users: int | None = None
    n_items: int | None = None
    n_categories: int = 20
    popularity_exponent: float = 1.0
    taste_focus: float = 0.85
    session_length: float = 6.0
    days: float = 30.0
    drift: float = 0.0
    start: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    seed: int = 0

    def __post_init__(self) -> None:
        if not MIN_INTERACTIONS <= self.n_interactions <= MAX_INTERACTIONS:
            raise ValueError(
                f"n_interactions must be in [{MIN_INTERACTIONS}, {MAX_INTERACTIONS}], "
                f"got {self.n_interactions}"
            )
        if not 0.0 <= self.drift <= 1.0 or not 0.0 <= self.taste_focus <= 1.0:
            raise ValueError("drift and taste_focus are fractions in [0, 1]")
        if self.n_categories < 1 or self.session_length < 1 or self.days <= 0:
            raise ValueError("n_categories >= 1, session_length >= 1 and days > 0 are required")
        if self.start.tzinfo is None:
            raise ValueError("start must carry a timezone")

    @property
    def users(self) -> int:
        return self.n_users or max(100, self.n_interactions // 25)

    @property
    def items(self) -> int:
        return self.n_items or max(100, min(50_000, self.n_interactions // 100))


@dataclass(frozen=True, slots=True)
class Shop:
    """A generated shop.

    ``log``: ``event_id``, ``user_id``, ``item_id``, ``action``, ``ts`` (epoch seconds),
    sorted by time; ``items``: ``item_id``, ``category`` (usable as item features).
    """

    config: ShopConfig
    log: pa.Table
    items: pa.Table


def generate(config: ShopConfig) -> Shop:
    """Generate the shop described by ``config``; the same config gives the same shop."""
    rng = np.random.default_rng(config.seed)
    n_users, n_items = config.users, config.items
    categories = min(config.n_categories, n_items)
    item_category = rng.integers(0, categories, n_items)
    popularity = _power_law(rng, n_items, config.popularity_exponent)
    primary = rng.integers(0, categories, n_users)
    secondary = (primary + rng.integers(1, max(categories, 2), n_users)) % categories
    drifted = _drifted_taste(rng, config, primary, categories)
    session_user, session_start, event_session = _sessions(rng, config, n_users)
    ts = _event_times(rng, config, session_start, event_session)
    taste = _session_taste(rng, session_user, session_start, primary, secondary, drifted)
    on_taste = rng.random(ts.size) < config.taste_focus
    item = _pick_items(rng, taste[event_session], on_taste, item_category, popularity)
    action = _actions(rng, on_taste)
    order = np.argsort(ts, kind="stable")
    user = session_user[event_session]
    log = pa.table(
        {
            EVENT_ID: _ids(f"s{config.seed}-e", np.arange(ts.size)),
            USER_ID: _ids("u", np.arange(n_users)).take(pa.array(user[order])),
            ITEM_ID: _ids("i", np.arange(n_items)).take(pa.array(item[order])),
            ACTION: pa.DictionaryArray.from_arrays(
                pa.array(action[order].astype(np.int8)), pa.array([a.value for a in _ACTIONS])
            ).cast(pa.string()),
            TS: pa.array(config.start.timestamp() + ts[order]),
        }
    )
    items = pa.table(
        {
            ITEM_ID: _ids("i", np.arange(n_items)),
            CATEGORY: _ids("c", item_category),
        }
    )
    return Shop(config=config, log=log, items=items)


def _ids(prefix: str, numbers: IntArray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def _power_law(rng: np.random.Generator, n: int, exponent: float) -> npt.NDArray[np.float64]:
    """Popularity weights ``rank ** -exponent`` over a random ranking of ``n`` items."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return np.asarray(rng.permutation(weights), dtype=np.float64)


def _drifted_taste(
    rng: np.random.Generator, config: ShopConfig, primary: IntArray, categories: int
) -> tuple[IntArray, npt.NDArray[np.float64]]:
    """Each user's taste after drifting and when it happens (never for users who keep theirs)."""
    n_users = primary.size
    moves = rng.random(n_users) < config.drift
    new_taste = (primary + rng.integers(1, max(categories, 2), n_users)) % categories
    span = config.days * _SECONDS_PER_DAY
    when = np.where(moves, rng.uniform(0.25 * span, 0.75 * span, n_users), np.inf)
    return np.asarray(new_taste, dtype=np.int64), when


def _sessions(
    rng: np.random.Generator, config: ShopConfig, n_users: int
) -> tuple[IntArray, npt.NDArray[np.float64], IntArray]:
    """Session owners (activity is log-normal), start offsets, and each event's session."""
    n_sessions = math.ceil(config.n_interactions / config.session_length) + 1
    lengths = rng.geometric(1.0 / config.session_length, n_sessions)
    while lengths.sum() < config.n_interactions:  # bounded: each round adds n_sessions events
        lengths += 1
    activity = rng.lognormal(0.0, 1.0, n_users)
    session_user = rng.choice(n_users, n_sessions, p=activity / activity.sum())
    session_start = rng.uniform(0.0, config.days * _SECONDS_PER_DAY, n_sessions)
    event_session = np.repeat(np.arange(n_sessions), lengths)[: config.n_interactions]
    return session_user, session_start, event_session


def _event_times(
    rng: np.random.Generator,
    config: ShopConfig,
    session_start: npt.NDArray[np.float64],
    event_session: IntArray,
) -> npt.NDArray[np.float64]:
    """Session start plus exponential gaps (mean 40 s) between a session's events."""
    gaps = rng.exponential(40.0, event_session.size)
    first = np.r_[True, event_session[1:] != event_session[:-1]]
    gaps[first] = 0.0
    elapsed = np.cumsum(gaps)
    session_base = np.maximum.accumulate(np.where(first, elapsed, 0.0))
    span = config.days * _SECONDS_PER_DAY
    times = np.minimum(session_start[event_session] + elapsed - session_base, span)
    return np.asarray(times, dtype=np.float64)


def _session_taste(
    rng: np.random.Generator,
    session_user: IntArray,
    session_start: npt.NDArray[np.float64],
    primary: IntArray,
    secondary: IntArray,
    drifted: tuple[IntArray, npt.NDArray[np.float64]],
) -> IntArray:
    """The category each session browses: the (possibly drifted) primary taste or the secondary."""
    new_taste, when = drifted
    current = np.where(
        session_start >= when[session_user], new_taste[session_user], primary[session_user]
    )
    use_secondary = rng.random(session_user.size) < _SECONDARY_SHARE
    return np.where(use_secondary, secondary[session_user], current)


def _pick_items(
    rng: np.random.Generator,
    taste: IntArray,
    on_taste: npt.NDArray[np.bool_],
    item_category: IntArray,
    popularity: npt.NDArray[np.float64],
) -> IntArray:
    """On-taste events draw from the taste's items by popularity, the rest from all items."""
    item = _draw(rng, np.arange(item_category.size), popularity, int((~on_taste).sum()))
    out = np.empty(taste.size, dtype=np.int64)
    out[~on_taste] = item
    for category in np.unique(taste[on_taste]):
        members = np.flatnonzero(item_category == category)
        slots = np.flatnonzero(on_taste & (taste == category))
        if members.size == 0:
            out[slots] = _draw(rng, np.arange(item_category.size), popularity, slots.size)
        else:
            out[slots] = _draw(rng, members, popularity[members], slots.size)
    return out


def _draw(
    rng: np.random.Generator, values: IntArray, weights: npt.NDArray[np.float64], n: int
) -> IntArray:
    cdf = np.cumsum(weights)
    picks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    chosen: IntArray = values[np.minimum(picks, values.size - 1)]
    return chosen


def _actions(rng: np.random.Generator, on_taste: npt.NDArray[np.bool_]) -> IntArray:
    u = rng.random(on_taste.size)
    on = np.searchsorted(np.cumsum(_ON_TASTE), u, side="right")
    off = np.searchsorted(np.cumsum(_OFF_TASTE), u, side="right")
    chosen: IntArray = np.minimum(np.where(on_taste, on, off), len(_ACTIONS) - 1).astype(np.int64)
    return chosen


# --------------------------------------------------------------------------- output


def write_shop(
    shop: Shop, location: str, *, fmt: LogFormat = LogFormat.PARQUET, s3: S3Settings | None = None
) -> dict[str, str]:
    """Write ``interactions.<fmt>`` and ``items.<fmt>`` below ``location``; return their URIs."""
    base = as_uri(location).rstrip("/")
    suffix = {LogFormat.JSONL: "jsonl", LogFormat.TSV: "tsv"}.get(fmt, fmt.value)
    return {
        "interactions": write_log(shop.log, f"{base}/interactions.{suffix}", fmt=fmt, s3=s3),
        "items": write_log(shop.items, f"{base}/items.{suffix}", fmt=fmt, s3=s3),
    }


def iter_actions(shop: Shop, *, batch_rows: int = 65_536) -> Iterator[UserAction]:
    """The log as validated ``UserAction`` events, in time order (e.g. for ``user-actions``)."""
    for batch in shop.log.to_batches(max_chunksize=batch_rows):
        columns = batch.to_pydict()
        for event_id, user_id, item_id, action, ts in zip(
            columns[EVENT_ID],
            columns[USER_ID],
            columns[ITEM_ID],
            columns[ACTION],
            columns[TS],
            strict=True,
        ):
            yield UserAction(
                event_id=event_id,
                user_id=user_id,
                item_id=item_id,
                action=ActionType(action),
                ts=datetime.fromtimestamp(ts, tz=UTC),
            )
