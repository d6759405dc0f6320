"""Offline replay: does updating lists on every action beat static lists? Measured, not assumed.

A time-ordered event log is replayed through the worker's own scoring code
(:func:`reco_worker.scoring.recommend`). Before each event, the list the user had at that moment
is checked for the event's item (hit-rate@k, ndcg@k) under four strategies:

- ``static``: the list computed at model time (trained vector, popular items for unknown users),
  never updated;
- ``naive``: the simplest fold-in, recomputed after each event: the trained vector plus the
  plain mean embedding of the last 10 items (:func:`reco_worker.scoring.naive_query`), no
  item-to-item neighbours;
- ``realtime``: the worker's policy, recomputed after each of the user's events from their
  bounded history;
- ``popular``: the model's popular items.

Every strategy but ``popular`` leaves out what the user already has (training interactions and
the replayed history), as the worker does, unless the policy keeps seen items.

Figures are reported over all events and over first-time events (the user's first interaction
with that item in the replay): a re-purchase can never hit a list that excludes seen items, so
"first time" is the fair measure of discovery. Event times are taken as they are (there is no
broker timestamp to clamp future times against).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from reco_common.contracts import ActionType, HistoryEntry
from reco_common.interactions import ACTION, EVENT_ID, Interactions
from reco_worker.scoring import (
    Policy,
    QueryBuilder,
    ServingModel,
    naive_query,
    recommend,
)

logger = logging.getLogger(__name__)

STRATEGIES = ("static", "naive", "realtime", "popular")
LIVE: dict[str, QueryBuilder | None] = {"naive": naive_query, "realtime": None}
CHUNK_EVENTS = 2048


@dataclass(slots=True)
class Tally:
    """Hits and discounted gains of one strategy over a set of events."""

    events: int = 0
    hits: int = 0
    gain: float = 0.0

    def add(self, rank: int | None) -> None:
        self.events += 1
        if rank is not None:
            self.hits += 1
            self.gain += 1.0 / math.log2(rank + 2)

    def report(self) -> dict[str, float]:
        n = max(self.events, 1)
        return {"hit_rate": self.hits / n, "ndcg": self.gain / n}


@dataclass(slots=True)
class Scoreboard:
    all: dict[str, Tally] = field(default_factory=lambda: {s: Tally() for s in STRATEGIES})
    first_time: dict[str, Tally] = field(default_factory=lambda: {s: Tally() for s in STRATEGIES})

    def add(self, strategy: str, rank: int | None, *, first_time: bool) -> None:
        self.all[strategy].add(rank)
        if first_time:
            self.first_time[strategy].add(rank)


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    entry: HistoryEntry


def replay(
    model: ServingModel,
    log: Interactions,
    *,
    policy: Policy,
    history_len: int,
    k: int,
) -> dict[str, Any]:
    """Replay ``log`` (time-ordered) against ``model``; return the report (see module doc)."""
    started = time.perf_counter()
    policy = dataclasses.replace(policy, top_n=k)
    board = Scoreboard()
    state = _ReplayState(model, policy, history_len)
    popular = model.popular(exclude=set(), n=k).items
    events = list(_events(log))
    for start in range(0, len(events), CHUNK_EVENTS):
        chunk = events[start : start + CHUNK_EVENTS]
        state.prepare(chunk)
        for event in chunk:
            first_time = state.first_time(event)
            item = event.entry.item_id
            board.add("static", _rank(state.static[event.user_id], item), first_time=first_time)
            for name, lists in state.current.items():
                board.add(name, _rank(lists[event.user_id], item), first_time=first_time)
            board.add("popular", _rank(popular, item), first_time=first_time)
            state.advance(event)
    elapsed = time.perf_counter() - started
    return _report(model, board, state, policy, history_len, k, len(events), elapsed)


class _ReplayState:
    """Per-user histories and current lists; lists after a chunk's events are scored at once."""

    def __init__(self, model: ServingModel, policy: Policy, history_len: int) -> None:
        self.model = model
        self.policy = policy
        self.history: dict[str, deque[HistoryEntry]] = {}
        self.static: dict[str, list[str]] = {}
        self.current: dict[str, dict[str, list[str]]] = {name: {} for name in LIVE}
        self.seen: set[tuple[str, str]] = set()
        self.unknown_item_events = 0
        self._history_len = history_len
        self._after: dict[str, deque[list[str]]] = {}
        self._policies = {
            "naive": dataclasses.replace(policy, neighbour_weight=0.0),
            "realtime": policy,
        }

    def prepare(self, chunk: Sequence[Event]) -> None:
        """Score the list each event leaves behind, and the model-time list of new users."""
        new_users = sorted({e.user_id for e in chunk} - self.static.keys())
        for user_id, ranked in zip(
            new_users, recommend(self.model, [(u, ()) for u in new_users], self.policy), strict=True
        ):
            self.static[user_id] = ranked.items
            for lists in self.current.values():
                lists[user_id] = ranked.items
        shadow: dict[str, deque[HistoryEntry]] = {}
        requests: list[tuple[str, tuple[HistoryEntry, ...]]] = []
        for event in chunk:
            hist = shadow.get(event.user_id)
            if hist is None:
                hist = shadow[event.user_id] = deque(
                    self.history.get(event.user_id, ()), maxlen=self._history_len
                )
            hist.append(event.entry)
            requests.append((event.user_id, tuple(hist)))
        self._after = {
            name: deque(
                r.items for r in recommend(self.model, requests, self._policies[name], query=query)
            )
            for name, query in LIVE.items()
        }

    def first_time(self, event: Event) -> bool:
        return (event.user_id, event.entry.item_id) not in self.seen

    def advance(self, event: Event) -> None:
        self.seen.add((event.user_id, event.entry.item_id))
        self.unknown_item_events += event.entry.item_id not in self.model.item_index
        hist = self.history.setdefault(event.user_id, deque(maxlen=self._history_len))
        hist.append(event.entry)
        for name, lists in self.current.items():
            lists[event.user_id] = self._after[name].popleft()


def _rank(items: list[str], item: str) -> int | None:
    try:
        return items.index(item)
    except ValueError:
        return None


def _events(log: Interactions) -> Iterator[Event]:
    table = log.table
    users = table.column("user_id").to_pylist()
    items = table.column("item_id").to_pylist()
    weights = log.weights().tolist()
    times = log.timestamps().tolist()
    actions = table.column(ACTION).to_pylist() if ACTION in table.column_names else None
    event_ids = table.column(EVENT_ID).to_pylist() if EVENT_ID in table.column_names else None
    for i, (user, item, weight, ts) in enumerate(zip(users, items, weights, times, strict=True)):
        action = actions[i] if actions is not None and actions[i] else ActionType.VIEW
        event_id = event_ids[i] if event_ids is not None and event_ids[i] else str(i)
        yield Event(user, HistoryEntry(event_id, item, ActionType(action), weight, ts))


def _report(
    model: ServingModel,
    board: Scoreboard,
    state: _ReplayState,
    policy: Policy,
    history_len: int,
    k: int,
    n_events: int,
    elapsed: float,
) -> dict[str, Any]:
    def section(tallies: dict[str, Tally]) -> dict[str, Any]:
        out: dict[str, Any] = {"events": tallies["static"].events}
        out.update({s: t.report() for s, t in tallies.items()})
        out["lift"] = {m: _lift(out["realtime"][m], out["static"][m]) for m in ("hit_rate", "ndcg")}
        out["lift_over_naive"] = {
            m: _lift(out["realtime"][m], out["naive"][m]) for m in ("hit_rate", "ndcg")
        }
        return out

    users = state.static.keys()
    return {
        "model": {"name": model.name, "version": model.version, "uri": model.uri},
        "k": k,
        "policy": {
            "blend": policy.blend,
            "half_life_s": policy.half_life_s,
            "neighbour_weight": policy.neighbour_weight,
            "neighbour_history": policy.neighbour_history,
            "action_weights": {str(a): w for a, w in policy.action_weights.items()},
            "history_len": history_len,
            "exclude_seen": policy.exclude_seen,
        },
        "events": n_events,
        "users": len(users),
        "unknown_users": sum(u not in model.user_index for u in users),
        "unknown_item_events": state.unknown_item_events,
        "first_time": section(board.first_time),
        "all": section(board.all),
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(n_events / elapsed, 1) if elapsed > 0 else None,
    }


def _lift(new: float, base: float) -> float | None:
    """Relative change of ``new`` over ``base`` (``None`` when the base is zero)."""
    return None if base == 0 else new / base - 1.0


def summary(report: dict[str, Any]) -> str:
    """A few lines for a terminal: each strategy's figures over first-time and all events."""
    k = report["k"]
    lines = [
        f"replayed {report['events']} events of {report['users']} users "
        f"({report['unknown_users']} unknown to the model) in {report['elapsed_s']} s",
    ]
    for name in ("first_time", "all"):
        part = report[name]
        lines.append(f"{name} ({part['events']} events)")
        for strategy in STRATEGIES:
            figures = part[strategy]
            lines.append(
                f"  {strategy:<9} hit_rate@{k} {figures['hit_rate']:.4f}  "
                f"ndcg@{k} {figures['ndcg']:.4f}"
            )
        for base in ("static", "naive"):
            lift = part["lift" if base == "static" else "lift_over_naive"]
            lines.append(
                f"  lift realtime/{base}: hit_rate {_pct(lift['hit_rate'])}, "
                f"ndcg {_pct(lift['ndcg'])}"
            )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"
