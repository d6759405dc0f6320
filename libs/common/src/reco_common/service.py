"""How a service process begins: its settings from the environment, then its logging.

A wrong setting stops the process before it does anything else, with one message naming each
variable that is wrong (:func:`reco_common.settings.load_settings`) and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from pydantic_settings import BaseSettings

from reco_common.logging import configure_logging
from reco_common.settings import CommonSettings, ConfigurationError, load_settings

S = TypeVar("S", bound=BaseSettings)

EXIT_CONFIGURATION = 2


def load_service_settings(
    cls: type[S],
    *,
    service: str,
    shared: Callable[[S], CommonSettings] | None = None,
) -> S:
    """Build ``cls`` from the environment and configure logging from its shared part.

    ``shared`` finds the :class:`CommonSettings` inside settings that compose rather than
    extend them (the worker's ``common``). Exits with :data:`EXIT_CONFIGURATION` on a bad value.
    """
    try:
        settings = load_settings(cls)
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(EXIT_CONFIGURATION) from None
    common = settings if shared is None else shared(settings)
    if not isinstance(common, CommonSettings):
        raise TypeError(f"{cls.__name__} does not extend CommonSettings: pass shared=")
    configure_logging(level=common.log_level, json=common.log_json, service=service)
    return settings
