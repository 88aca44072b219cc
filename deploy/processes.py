"""Programs the launcher runs (workers, HAProxy, coturn): started, watched and stopped for sure.

Each runs in a process group of its own, so stopping it also stops what it
started (a worker's model probe, llama.cpp's server). Where util-linux's
``setpriv`` is present (any Debian), each is also told to receive SIGTERM if
the launcher dies, even by SIGKILL, so nothing outlives it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable

STOP_GRACE_SECS = 10.0


class Child:
    """One program: its output printed line by line with its name, its last lines kept."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        echo: Callable[[str], None] | None = None,
    ):
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.echo = echo or (lambda line: print(line, flush=True))
        self.process: subprocess.Popen | None = None
        self.tail: deque[str] = deque(maxlen=40)
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> Child:
        self.tail.clear()
        self.process = subprocess.Popen(
            _dies_with_parent(self.argv),
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            self.echo(f"[{self.name}] {line}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self, grace: float = STOP_GRACE_SECS) -> None:
        """SIGTERM to its process group, SIGKILL after ``grace`` seconds; waits for the end."""
        if self.process is None:
            return
        if self.running():
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait(timeout=grace)
        # Whatever it started and left behind in its group goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(2)

    def last_lines(self, n: int = 15) -> str:
        return "\n".join(list(self.tail)[-n:])


def find_program(name: str) -> str | None:
    """``name`` on the PATH, or in the sbin folders a normal user's PATH may lack (HAProxy)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def _dies_with_parent(argv: list[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when the launcher dies (Linux, util-linux)."""
    setpriv = shutil.which("setpriv")
    if setpriv and sys.platform.startswith("linux"):
        return [setpriv, "--pdeathsig", "TERM", "--", *argv]
    return argv


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers 200 (no proxy, whatever the environment says)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until(
    ready: Callable[[], bool], child: Child, timeout: float, what: str, poll: float = 0.2
) -> None:
    """Until ``ready()``; raises :class:`StartFailed` if ``child`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not child.running():
            raise StartFailed(child, f"{what}: exited with code {child.exit_code()}")
        if time.monotonic() > deadline:
            raise StartFailed(child, f"{what}: not ready within {timeout:.0f} s")
        time.sleep(poll)  # polling a port: there is no event to wait for


class StartFailed(RuntimeError):
    def __init__(self, child: Child, reason: str):
        self.child = child
        super().__init__(
            f"{child.name} failed to start ({reason}). Its last lines:\n{child.last_lines()}"
        )
