"""The evaluation report: a JSON document (model and popularity baseline side by side) and a PNG.

The plot shows the validation metric per epoch against the baseline on the same validation
users, and the held-out metrics of both as bars.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display in a CronJob; must precede pyplot
import matplotlib.pyplot as plt

from reco_common.contracts import EvalMetrics, dumps
from reco_trainer.training import Epoch


@dataclass(frozen=True, slots=True)
class Report:
    model_name: str
    version: str
    data_snapshot: str
    metrics: EvalMetrics
    validation_baseline: dict[str, float]
    history: list[Epoch]
    best_epoch: int
    details: dict[str, Any]
    search: dict[str, Any] | None = None  # reco_trainer.tune.Search.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "version": self.version,
            "data_snapshot": self.data_snapshot,
            "model": self.metrics.model,
            "baseline": self.metrics.baseline,
            "best_epoch": self.best_epoch,
            "history": [
                {"epoch": e.number, "seconds": round(e.seconds, 3), **e.metrics}
                for e in self.history
            ],
            "validation_baseline": self.validation_baseline,
            **self.details,
            **({"search": self.search} if self.search is not None else {}),
        }

    def json_bytes(self) -> bytes:
        return dumps(self.to_dict())

    def png_bytes(self, *, metric: str) -> bytes:
        panels = 3 if self.search else 2
        figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2))
        try:
            self._plot_epochs(axes[0], metric)
            self._plot_held_out(axes[1])
            if self.search:
                self._plot_search(axes[2], self.search)
            figure.suptitle(f"{self.model_name} {self.version}")
            figure.tight_layout()
            out = io.BytesIO()
            figure.savefig(out, format="png", dpi=100)
        finally:
            plt.close(figure)
        return out.getvalue()

    def _plot_epochs(self, axes: Any, metric: str) -> None:
        points = [(e.number, e.metrics[metric]) for e in self.history if metric in e.metrics]
        if points:
            epochs, values = zip(*points, strict=True)
            axes.plot(epochs, values, marker="o", label="LightFM (validation)")
        if metric in self.validation_baseline:
            axes.axhline(
                self.validation_baseline[metric], color="grey", linestyle="--", label="popularity"
            )
        if self.best_epoch:
            axes.axvline(self.best_epoch, color="green", alpha=0.3, label="kept epoch")
        axes.set_xlabel("epoch")
        axes.set_ylabel(metric)
        axes.set_title(f"{metric} per epoch" if points else "no validation split")
        axes.legend(loc="best")

    @staticmethod
    def _plot_search(axes: Any, search: dict[str, Any]) -> None:
        """Each complete trial's best validation value, and the best so far."""
        done = [(t["number"], t["value"]) for t in search["trials"] if t["value"] is not None]
        pruned = [t["number"] for t in search["trials"] if t["value"] is None]
        if done:
            numbers, values = zip(*done, strict=True)
            axes.scatter(numbers, values, label="trial")
            best = [max(values[: i + 1]) for i in range(len(values))]
            axes.step(numbers, best, where="post", color="green", label="best so far")
        for number in pruned:
            axes.axvline(number, color="grey", alpha=0.15)
        axes.set_xlabel("trial (grey: pruned or failed)")
        axes.set_ylabel(search["metric"])
        axes.set_title(f"search: {len(search['trials'])} trials in {search['seconds']:.0f} s")
        if done:
            axes.legend(loc="best")

    def _plot_held_out(self, axes: Any) -> None:
        names = list(self.metrics.model)
        positions = range(len(names))
        width = 0.4
        axes.bar(
            [p - width / 2 for p in positions],
            list(self.metrics.model.values()),
            width,
            label="LightFM",
        )
        axes.bar(
            [p + width / 2 for p in positions],
            [self.metrics.baseline.get(n, 0.0) for n in names],
            width,
            label="popularity",
        )
        axes.set_xticks(list(positions), names, rotation=30, ha="right")
        axes.set_title("held-out split")
        axes.legend(loc="best")
