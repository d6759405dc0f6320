"""The demo's terminal view: a live rich layout, or plain lines for logs and tests.

The orchestrator (``reco_devkit.demo``) fills a :class:`Board` as things happen; :func:`render`
draws it. The plain reporter prints each new timeline note and a status line now and then.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from reco_common.contracts import ModelPublished, RolloutEvent, UserAction
from reco_devkit.traffic import Shopper

LIST_ROWS = 8
TIMELINE_ROWS = 8


@dataclass
class Board:
    """Everything the view shows, updated by the orchestrator."""

    run_id: str
    started: float = field(default_factory=time.monotonic)
    phase: str = "starting"
    sent: int = 0
    sent_per_s: float = 0.0
    applied: float = 0.0
    applied_per_s: float = 0.0
    fresh_p50_s: float | None = None
    fresh_p99_s: float | None = None
    worker_versions: list[str | None] = field(default_factory=list)
    published: list[ModelPublished] = field(default_factory=list)
    rollouts: list[RolloutEvent] = field(default_factory=list)
    shopper: Shopper | None = None
    shopper_actions: deque[UserAction] = field(default_factory=lambda: deque(maxlen=4))
    shopper_list: dict[str, Any] | None = None
    category: dict[str, str] = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def note(self, message: str) -> None:
        self.timeline.append((self.elapsed_s, message))

    @property
    def active_version(self) -> str | None:
        served = {v for v in self.worker_versions if v is not None}
        return served.pop() if len(served) == 1 else None

    def shopper_share(self) -> tuple[int, int]:
        """How many of the shopper's listed items belong to their new category."""
        if self.shopper is None or self.shopper_list is None:
            return 0, 0
        items = [i["item_id"] for i in self.shopper_list["items"][:LIST_ROWS]]
        return sum(self.category.get(i) == self.shopper.new for i in items), len(items)


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _metrics(board: Board) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("events sent", f"{board.sent:,}  ({board.sent_per_s:,.0f}/s)")
    table.add_row("events applied", f"{board.applied:,.0f}  ({board.applied_per_s:,.0f}/s)")
    table.add_row("freshness p50 / p99", f"{_ms(board.fresh_p50_s)} / {_ms(board.fresh_p99_s)}")
    versions = ", ".join(v or "loading" for v in board.worker_versions) or "-"
    table.add_row("active model", Text(board.active_version or "-", style="bold green"))
    table.add_row("workers serve", versions)
    return table


def _models(board: Board) -> Table:
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("model version")
    table.add_column("precision@10", justify="right")
    table.add_column("popularity", justify="right")
    table.add_column("rollout")
    for model in board.published:
        statuses = [r.status.value for r in board.rollouts if r.version == model.version]
        p10 = model.metrics.model.get("precision@10")
        base = model.metrics.baseline.get("precision@10")
        table.add_row(
            model.version,
            "-" if p10 is None else f"{p10:.3f}",
            "-" if base is None else f"{base:.3f}",
            " → ".join(statuses) or "waiting",
        )
    return table


def _shopper(board: Board) -> RenderableType:
    shopper = board.shopper
    if shopper is None:
        return Text("choosing a shopper…")
    acted = Text()
    for action in board.shopper_actions:
        acted.append(f"{action.action.value} {action.item_id} ", style="cyan")
        acted.append(f"({board.category.get(action.item_id, '?')})  ")
    table = Table(box=None, padding=(0, 1), show_edge=False)
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("category")
    table.add_column("score", justify="right")
    listed = board.shopper_list
    for rank, item in enumerate(listed["items"][:LIST_ROWS] if listed else [], 1):
        category = board.category.get(item["item_id"], "?")
        style = "bold magenta" if category == shopper.new else ""
        score = item["score"]
        table.add_row(
            str(rank),
            item["item_id"],
            Text(category, style=style),
            "" if score is None else f"{score:.2f}",
        )
    footer = "no list yet"
    if listed:
        share, shown = board.shopper_share()
        footer = (
            f"{listed['source']} list of model {listed['model_version']}, "
            f"{share} of {shown} from {shopper.new}"
        )
    return Group(Text.assemble(("acts: ", "bold"), acted), table, Text(footer, style="dim"))


def _timeline(board: Board) -> Text:
    text = Text()
    for at, message in board.timeline[-TIMELINE_ROWS:]:
        text.append(f"{_clock(at)} ", style="dim")
        text.append(f"{message}\n")
    return text


def render(board: Board) -> RenderableType:
    """The whole live view."""
    title = f"reco demo · run {board.run_id} · {board.phase} · {_clock(board.elapsed_s)}"
    shopper = board.shopper
    who = (
        f"shopper {shopper.user_id}: usually buys {shopper.usual}, now browsing {shopper.new}"
        if shopper
        else "shopper"
    )
    return Group(
        Panel(_metrics(board), title=title, title_align="left"),
        Panel(_models(board), title="models (trainer → controller)", title_align="left"),
        Panel(_shopper(board), title=who, title_align="left"),
        Panel(_timeline(board), title="what happened", title_align="left"),
    )


class PlainReporter:
    """Prints new timeline notes at once and a status line every ``every_s`` seconds."""

    def __init__(self, console: Console, *, every_s: float = 5.0) -> None:
        self._console = console
        self._every_s = every_s
        self._printed = 0
        self._last_status = 0.0

    def update(self, board: Board) -> None:
        for at, message in board.timeline[self._printed :]:
            self._console.print(f"{_clock(at)} {message}", highlight=False, soft_wrap=True)
        self._printed = len(board.timeline)
        if board.sent_per_s and time.monotonic() - self._last_status >= self._every_s:
            self._last_status = time.monotonic()
            self._console.print(status_line(board), highlight=False, soft_wrap=True)


def status_line(board: Board) -> str:
    share, shown = board.shopper_share()
    return (
        f"{_clock(board.elapsed_s)}   sent {board.sent_per_s:.0f}/s, applied "
        f"{board.applied_per_s:.0f}/s, freshness p50 {_ms(board.fresh_p50_s)} p99 "
        f"{_ms(board.fresh_p99_s)}, model {board.active_version or '-'}; shopper's list: "
        f"{share}/{shown} from {board.shopper.new if board.shopper else '-'}"
    )
