"""Running one role object as a process: signal → stop accepting → drain → commit → close.

A role has ``start()`` (connect, fail fast), ``run()`` (until done or stopped) and ``stop()``
(idempotent: stop taking work, finish the work in hand, commit, close). :func:`serve` wires
SIGTERM/SIGINT to ``stop()`` and bounds it by the grace period. This module owns the signals:
uvicorn runs under :class:`reco_common.ops.Server`, which installs none of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Protocol

logger = logging.getLogger(__name__)


class Role(Protocol):
    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(event: asyncio.Event) -> Iterator[None]:
    """Set ``event`` on SIGTERM or SIGINT while inside (enter from the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, _on_signal, sig, event)
    try:
        yield
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


def _on_signal(sig: signal.Signals, event: asyncio.Event) -> None:
    logger.info("received %s: shutting down", sig.name)
    event.set()


async def serve(role: Role, *, grace_s: float) -> None:
    """Start ``role``, run it until it returns or a signal arrives, then stop it within ``grace_s``."""
    stopping = asyncio.Event()
    with stop_on_signals(stopping):
        await role.start()
        await _run_until_stopped(role, stopping, grace_s=grace_s)


async def _run_until_stopped(role: Role, stopping: asyncio.Event, *, grace_s: float) -> None:
    run = asyncio.create_task(role.run(), name="role.run")
    signalled = asyncio.create_task(stopping.wait(), name="signal")
    try:
        await asyncio.wait({run, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        try:
            await asyncio.shield(asyncio.wait_for(role.stop(), timeout=grace_s))
        except TimeoutError:
            logger.error("stop did not finish within the %.1f s grace period", grace_s)
        if not run.done():
            run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    if run.done() and not run.cancelled() and run.exception() is not None:
        raise run.exception()  # type: ignore[misc]
