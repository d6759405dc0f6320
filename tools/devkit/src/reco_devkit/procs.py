"""Services as real local processes: start with an environment, wait until ready, stop, kill.

The demo and the end-to-end tests run every service through this harness, exactly as a
container would run it: the console script, settings from the environment, logs to a file.
A process gets the parent's environment without its ``RECO_*`` settings (and ``MODEL_URI``),
plus the ones given: a run never picks up a setting by accident. Each one runs in its own
session, so a Ctrl-C on the terminal reaches the demo alone, which then stops them in order.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from reco_common.contracts import MODEL_URI_ENV

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def console_script(name: str) -> str:
    """The path of a workspace console script (``reco-worker``…) next to this interpreter."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed in {path.parent}: run `make install`")
    return str(path)


@dataclass
class ServiceProcess:
    """One service process; ``ready_url`` answers 200 once it serves, under ``base_url``
    (``ops_url``: its internal port, when it has one apart, e.g. the API's ``/metrics``)."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log_path: Path
    ready_url: str | None = None
    base_url: str | None = None
    ops_url: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._proc.pid

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not _is_setting(k)} | dict(self.env)
        self._proc = subprocess.Popen(
            self.argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        logger.info("started %s (pid %d), log %s", self.name, self._proc.pid, self.log_path)
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, *, timeout_s: float = 60.0, url: str | None = None) -> None:
        """Poll ``url`` (default ``ready_url``) until 200; fail naming the log when the process
        dies or the bound passes."""
        url = url or self.ready_url
        if url is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(
                    f"{self.name} exited ({self.returncode()}); see {self.log_path}:\n{self.tail()}"
                )
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} not ready after {timeout_s:.0f} s; see {self.log_path}:\n{self.tail()}"
        )

    def terminate(self, *, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s: killing it", self.name, timeout_s)
                self._proc.kill()
                self._proc.wait(timeout=10)
        return self.returncode()

    def send_sigterm(self) -> None:
        """SIGTERM and return at once (the graceful stop under test; ``wait`` for its end)."""
        if self.running() and self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)

    def wait(self, *, timeout_s: float) -> int:
        """Wait for the process to end by itself (a job like ``reco-trainer run``); kill it after
        ``timeout_s``. Returns the exit code."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not started")
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"{self.name} still running after {timeout_s:.0f} s: killed"
            ) from None

    def kill(self) -> None:
        """``kill -9``: no chance to flush, commit or say goodbye."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def returncode(self) -> int:
        code = None if self._proc is None else self._proc.poll()
        return -1 if code is None else code

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def stop_all(processes: Iterable[ServiceProcess], *, timeout_s: float = 30.0) -> dict[str, int]:
    """SIGTERM every process at once and wait for all of them; their exit codes by name."""
    running = list(processes)
    if not running:
        return {}
    with ThreadPoolExecutor(max_workers=len(running)) as pool:
        codes = pool.map(lambda p: p.terminate(timeout_s=timeout_s), running)
        return {p.name: code for p, code in zip(running, codes, strict=True)}


def _is_setting(name: str) -> bool:
    return name.startswith("RECO_") or name == MODEL_URI_ENV
