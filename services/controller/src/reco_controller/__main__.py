"""``python -m reco_controller`` / ``reco-controller``."""

from __future__ import annotations

from reco_controller.cli import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
