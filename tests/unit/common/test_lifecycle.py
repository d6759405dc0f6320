"""The process lifecycle: SIGTERM stops the role within the grace period; signals are ours."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from reco_common.lifecycle import serve


class Role:
    """A role that runs until stopped and records what was called."""

    def __init__(self, *, stop_takes_s: float = 0.0) -> None:
        self.started = asyncio.Event()
        self.calls: list[str] = []
        self._stopped = asyncio.Event()
        self._stop_takes_s = stop_takes_s

    async def start(self) -> None:
        self.calls.append("start")
        self.started.set()

    async def run(self) -> None:
        await self._stopped.wait()
        self.calls.append("run returned")

    async def stop(self) -> None:
        self.calls.append("stop")
        await asyncio.sleep(self._stop_takes_s)
        self._stopped.set()


async def _terminate_once_started(role: Role) -> None:
    await role.started.wait()
    os.kill(os.getpid(), signal.SIGTERM)


async def test_sigterm_stops_the_role_and_restores_the_signals() -> None:
    before = signal.getsignal(signal.SIGTERM)
    role = Role()
    await asyncio.gather(serve(role, grace_s=5), _terminate_once_started(role))
    assert role.calls == ["start", "stop", "run returned"]
    assert signal.getsignal(signal.SIGTERM) == before


async def test_a_stop_past_the_grace_period_is_cut_short(caplog: pytest.LogCaptureFixture) -> None:
    role = Role(stop_takes_s=30)
    await asyncio.gather(serve(role, grace_s=0.05), _terminate_once_started(role))
    assert role.calls == ["start", "stop"]
    assert "grace period" in caplog.text


async def test_a_failing_run_is_raised_after_stop() -> None:
    class Failing(Role):
        async def run(self) -> None:
            raise RuntimeError("broken")

    role = Failing()
    with pytest.raises(RuntimeError, match="broken"):
        await serve(role, grace_s=5)
    assert role.calls == ["start", "stop"]
