"""``reco-trainer``: the CLI (``train``, ``run``, ``synth``); see :mod:`reco_trainer.cli`."""

from __future__ import annotations

from reco_trainer.cli import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
