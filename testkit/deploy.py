"""``python -m deploy`` as a user starts it, in a subprocess, for tests and the benchmark.

Like :class:`testkit.app.AppProcess`, its environment keeps everything on
127.0.0.1 (loopback-only ICE, offline, no developer keys), and it is stopped
however its block ends (see :class:`testkit.app.Program`). Entering starts the
launcher and returns once it says the page is ready; leaving stops it with
SIGINT (Ctrl-C) and, whatever happened, makes sure nothing it started is left.
Every line it printed is kept: each worker's lines carry its name (``[w1] ...``)
and, with ``--log-requests``, one ``voice_lab.access`` line per request.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from testkit.app import ROOT, Program, app_environment, free_port

START_TIMEOUT = 300.0
READY_LINE = "Voice Lab is ready at"
STARTING_LINE = re.compile(r"^\[deploy\] starting (w\d+) \(pid (\d+)\)")
WORKER_LINE = re.compile(r"^\s+(w\d+)\s+(http://\S+)\s+\(agent-check port (\d+), pid (\d+)\)")


class DeployProcess(Program):
    """``python -m deploy --workers N`` on a free port, with ``--no-restart --log-requests``."""

    def __init__(
        self,
        workers: int = 2,
        *,
        max_sessions: int | None = None,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        log_path: Path | None = None,
    ):
        super().__init__()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = app_environment(self.port, max_sessions, extra_env)
        self.argv = [
            sys.executable,
            "-m",
            "deploy",
            "--workers",
            str(workers),
            "--port",
            str(self.port),
            "--no-restart",
            "--log-requests",
            *(["--max-sessions", str(max_sessions)] if max_sessions else []),
            *args,
        ]
        self.log_path = log_path
        self.lines: list[str] = []
        self.workers: dict[str, dict] = {}
        self.process: subprocess.Popen | None = None
        self.started: list[psutil.Process] = []
        self._reader: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> DeployProcess:
        self.process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._running()
        self._reader = threading.Thread(target=self._read, name="deploy-output", daemon=True)
        self._reader.start()
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(READY_LINE in line for line in self.lines):
            if self._abandoned.is_set():
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"python -m deploy exited with {self.process.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"python -m deploy was not ready in {timeout:.0f}s:\n{self.tail()}"
                )
            time.sleep(0.1)  # polling the launcher's output
        for line in self.lines:
            if match := WORKER_LINE.match(line):
                name, url, agent, pid = match.groups()
                self.workers[name] = {"url": url, "agent_port": int(agent), "pid": int(pid)}
        self.started = self.descendants()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        log = self.log_path.open("w") if self.log_path else None
        try:
            for raw in self.process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
        finally:
            if log:
                log.close()

    def descendants(self) -> list[psutil.Process]:
        """Every process the launcher started (workers, their children, HAProxy, coturn)."""
        if self.process is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.process.pid).children(recursive=True)
        return []

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60.0) -> int | None:
        """Ctrl-C (or ``sig``) to the launcher; returns its exit code. Kills leftovers."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for leftover in self.leftovers():
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        if self._reader is not None:
            self._reader.join(5)
        self._stopped()
        return self.process.returncode

    def leftovers(self) -> list[psutil.Process]:
        """Processes the launcher started that still run (those it named as it started them too)."""
        named = []
        for line in self.lines:
            if match := STARTING_LINE.match(line):
                with contextlib.suppress(psutil.NoSuchProcess):
                    named.append(psutil.Process(int(match.group(2))))
        return [p for p in {p.pid: p for p in [*self.started, *named]}.values() if _alive(p)]

    # -- workers -----------------------------------------------------------------------------

    def kill_worker(self, name: str) -> None:
        """A worker dies at once (SIGKILL to it and what it started): a crash, an OOM kill."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.workers[name]["pid"], signal.SIGKILL)

    def worker_lines(self, name: str) -> list[str]:
        return [line for line in self.lines if line.startswith(f"[{name}] ")]

    def requests_served(self, name: str, method: str, path: str) -> int:
        """How many ``method path`` requests worker ``name`` logged."""
        needle = f"voice_lab.access: {name} {method} {path} "
        return sum(needle in line for line in self.lines)

    def tail(self, chars: int = 6000) -> str:
        return "\n".join(self.lines)[-chars:]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def bound_ports(ports: list[int]) -> list[int]:
    """Which of ``ports`` something still listens on (TCP, any address)."""
    listening = {
        c.laddr.port
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM  # UDP: bound is taken
    }
    return [p for p in ports if p in listening]
