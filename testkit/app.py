"""``python app.py`` as a user starts it, in a subprocess, for tests and the benchmark.

One harness for code that is not async (``with AppProcess(log) as app:``, the
browser tests) and async code (``async with AppProcess(log) as app:``, aiortc
clients and the benchmark). The app runs in its own process group (stopped
with SIGTERM, then SIGKILL), every line it prints is kept with the moment it
arrived and written to a log file, and its environment keeps it on 127.0.0.1:
loopback-only ICE, the offline variables, no proxy for local addresses, an
upload folder of its own (``upload_dir``, removed when it stops), and none of
the developer's provider keys or base URLs unless the caller passes them in
``extra_env`` (which overrides everything here).

The app lives in a session of its own, so a signal sent to its parent (a
``timeout``, a Ctrl-C in a terminal) never reaches it: the parent must stop it.
Leaving the ``with`` block does, however the block ends; an ``async with``
cancelled while the app is still starting stops it too; and whatever is still
running when the interpreter exits is stopped then (``atexit``), which covers
a parent that ends by an exception outside the block. A parent killed with
SIGKILL cannot clean up: nothing can.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from testkit.env import OFFLINE_ENV, clear_provider_variables

ROOT = Path(__file__).resolve().parent.parent
# Model warm-up takes ~10 s alone; far longer with other tests hogging the CPU.
APP_START_TIMEOUT = 240.0
# Every client of a test comes from 127.0.0.1 (unless it binds another loopback
# address): one client, as the app counts, so the per-client limits are raised.
CONNECTIONS_PER_CLIENT = 8
OFFERS_PER_MINUTE = 120
UPLOAD_MB_PER_CLIENT = 1000
LOOPBACK = "127.0.0.1,localhost"

# Every app started and not yet stopped, for the stop at interpreter exit.
_RUNNING: set[Program] = set()


@atexit.register
def _stop_every_app() -> None:
    for program in list(_RUNNING):
        program.stop()


class Program:
    """A program a test or benchmark runs (``python app.py``, ``python -m deploy``).

    Subclasses start it in :meth:`start` (calling :meth:`_running` once it is
    launched, and giving up when ``_abandoned`` is set) and end it in
    :meth:`stop` (calling :meth:`_stopped`). It is stopped when its ``with``
    block ends, when an ``async with`` is cancelled while it starts, and at the
    interpreter's exit.
    """

    def __init__(self) -> None:
        self._abandoned = threading.Event()

    def start(self) -> Program:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _running(self) -> None:
        _RUNNING.add(self)

    def _stopped(self) -> None:
        _RUNNING.discard(self)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self):
        starting = asyncio.ensure_future(asyncio.to_thread(self.start))
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            # The block is never entered, so its exit will not stop the program: stop it
            # here, once the starting thread has seen that nobody waits for it any more.
            self._abandoned.set()
            with contextlib.suppress(Exception):
                await starting
            await asyncio.to_thread(self.stop)
            raise

    async def __aexit__(self, *exc) -> None:
        await asyncio.to_thread(self.stop)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (free when this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_environment(
    port: int, max_sessions: int | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The app's environment: this one, on ``port``, offline, logging at INFO, keyless.

    ``max_sessions`` sets ``VOICE_LAB_MAX_SESSIONS`` (None: the app's default) and
    lets one client hold as many connections as the app allows one client (one
    fewer, when there is more than one slot), make many offers and upload much.
    """
    env = dict(os.environ)
    clear_provider_variables(env)
    env.update(
        {
            **OFFLINE_ENV,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "VOICE_LAB_LOOPBACK_ICE": "1",
            "VOICE_LAB_LOG_LEVEL": "INFO",
            "VOICE_LAB_MAX_SESSIONS_PER_CLIENT": str(max_sessions or CONNECTIONS_PER_CLIENT),
            "VOICE_LAB_OFFERS_PER_MINUTE": str(OFFERS_PER_MINUTE),
            "VOICE_LAB_UPLOAD_MB_PER_CLIENT": str(UPLOAD_MB_PER_CLIENT),
            "NO_PROXY": LOOPBACK,
            "no_proxy": LOOPBACK,
        }
    )
    if max_sessions is not None:
        env["VOICE_LAB_MAX_SESSIONS"] = str(max_sessions)
    env.update(extra or {})
    return env


class AppProcess(Program):
    """``python app.py`` from the repository root, its output timestamped line by line.

    Entering (``with`` or ``async with``) starts it and returns once ``/``
    answers HTTP 200; leaving stops it. ``url`` has no trailing slash.
    """

    def __init__(
        self,
        log_path: Path | None = None,
        *,
        max_sessions: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"voice-lab-app-{port}.log"
        self.env = app_environment(port, max_sessions, extra_env)
        self._own_upload_dir = "GRADIO_TEMP_DIR" not in self.env
        if self._own_upload_dir:
            self.env["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="voice-lab-uploads-")
        # Gradio's upload cache (``GRADIO_TEMP_DIR``): what visitors' uploads fill.
        self.upload_dir = Path(self.env["GRADIO_TEMP_DIR"])
        self.lines: list[tuple[float, str]] = []
        self.process: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.http_ready_at: float | None = None
        self._reader: threading.Thread | None = None
        # Set when whoever waits for the start gives up (a cancelled ``async with``).
        super().__init__()

    def start(self) -> AppProcess:
        log = self.log_path.open("w")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._running()
        self._reader = threading.Thread(
            target=self._read_output, args=(log,), name="app-output", daemon=True
        )
        self._reader.start()
        try:
            self.http_ready_at = self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_output(self, log) -> None:
        assert self.process is not None and self.process.stdout is not None
        with log:
            for raw in self.process.stdout:
                line = raw.decode(errors="replace")
                self.lines.append((time.monotonic(), line))
                log.write(line)
                log.flush()

    def _wait_until_serving(self) -> float:
        """When ``/`` first answered HTTP 200 (time.monotonic()); raises if the app died first."""
        assert self.process is not None
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + APP_START_TIMEOUT
        while time.monotonic() < deadline:
            if self._abandoned.is_set():
                raise RuntimeError("the start of app.py was abandoned")
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"app.py exited with {self.process.returncode} before serving:\n"
                    f"{self.log_tail()}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                direct.open(self.url + "/", timeout=2) as response,
            ):
                if response.status == 200:
                    return time.monotonic()
            time.sleep(0.1)  # polling interval, not synchronisation
        raise TimeoutError(
            f"app.py did not serve {self.url} within {APP_START_TIMEOUT:.0f}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM the app's process group (its own session), SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(5)
        if self._own_upload_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)
        self._stopped()

    # -- how full it is ---------------------------------------------------------------

    def health(self) -> dict:
        """The app's ``/health``: its worker, open sessions, capacity and whether it accepts."""
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with direct.open(self.url + "/health", timeout=5) as response:
            return json.load(response)

    def health_when(self, predicate: Callable[[dict], bool], timeout: float) -> dict:
        """The app's ``/health`` once ``predicate`` holds for it; raises ``TimeoutError``
        (with the last answer) if it does not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(health := self.health()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout:.0f}s /health still says {health}")
            time.sleep(0.05)  # polling another process: there is no event to await
        return health

    def wait_until_idle(self, timeout: float) -> float:
        """Waits until the app holds no connection; returns the seconds waited.

        Raises ``TimeoutError`` (with the app's state) if one is still open at ``timeout``.
        """
        started = time.monotonic()
        self.health_when(lambda health: not health["sessions"], timeout)
        return time.monotonic() - started

    # -- what it printed ----------------------------------------------------------------

    def seconds_to_line(self, needle: str) -> float | None:
        """Seconds from the start to the first line containing ``needle`` (None: not yet)."""
        for t, line in self.lines:
            if needle in line:
                return t - self.started_at
        return None

    def log_tail(self, chars: int = 4000) -> str:
        return "".join(line for _, line in self.lines)[-chars:]

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int = 0) -> str:
        """The log file from byte ``offset`` (see :meth:`log_size`) to its end."""
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
