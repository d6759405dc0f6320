"""``reco-api``: build the settings, configure logging, serve until SIGTERM."""

from __future__ import annotations

from reco_api.server import run
from reco_api.settings import Settings
from reco_common.service import load_service_settings


def main() -> None:
    run(settings=load_service_settings(Settings, service="api"))


if __name__ == "__main__":
    main()
