"""``reco-api``: build the settings, configure logging, serve until SIGTERM."""

from __future__ import annotations

import sys

from reco_api.server import run
from reco_api.settings import Settings
from reco_common.logging import configure_logging
from reco_common.settings import ConfigurationError, load_settings


def main() -> None:
    try:
        settings = load_settings(Settings)
    except ConfigurationError as exc:
        sys.exit(str(exc))
    configure_logging(level=settings.log_level, json=settings.log_json, service="api")
    run(settings=settings)


if __name__ == "__main__":
    main()
