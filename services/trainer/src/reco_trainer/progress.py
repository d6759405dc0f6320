"""Training progress: a rich progress bar on a terminal, one structured log line per epoch otherwise."""

from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Protocol, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

logger = logging.getLogger(__name__)


class EpochProgress(Protocol):
    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def epoch(self, number: int, seconds: float, metrics: dict[str, float]) -> None: ...


class LogProgress:
    """``epoch 3/30 2.41 s precision@10=0.1234`` as a log line (containers, CronJobs, pipes)."""

    def __init__(self, total: int) -> None:
        self._total = total

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def epoch(self, number: int, seconds: float, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        logger.info(
            "epoch %d/%d %.2f s %s",
            number,
            self._total,
            seconds,
            shown,
            extra={"epoch": number, "epoch_seconds": round(seconds, 3), **metrics},
        )


class BarProgress:
    """A rich progress bar with the epoch count and the latest validation metrics."""

    def __init__(self, total: int, console: Console) -> None:
        self._total = total
        self._bar = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._bar.add_task("train", total=total, metrics="")

    def __enter__(self) -> Self:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def epoch(self, number: int, seconds: float, metrics: dict[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        self._bar.update(self._task, completed=number, metrics=shown)


def progress_for(total: int) -> EpochProgress:
    """A bar when stderr is a terminal, log lines otherwise."""
    if sys.stderr.isatty():
        return BarProgress(total, Console(stderr=True))
    return LogProgress(total)
