"""The benchmark leaves nothing behind: its ``python app.py`` and every port go with it.

``python -m bench webrtc`` starts the app in a session of its own (so a Ctrl-C
in the terminal does not reach it); ended by a signal, the benchmark must stop
it itself. Here it is ended while the app serves and a visitor is talking to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from testkit.app import ROOT, AppProcess

STARTUP_TIMEOUT = 240.0
STOP_TIMEOUT = 60.0


def _listening_ports(process: psutil.Process) -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {
            c.laddr.port
            for c in process.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
    return set()


def _serves(port: int) -> bool:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _app_serving(bench: psutil.Process) -> tuple[psutil.Process, int] | None:
    """The bench's ``app.py`` child and its HTTP port, once ``/`` answers."""
    for child in bench.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "app.py" in child.cmdline():
                for port in _listening_ports(child):
                    if _serves(port):
                        return child, port
    return None


def _stacks(pid: int) -> str:
    """Every thread's Python stack in process ``pid`` (py-spy, from the dev requirements)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    dumped = subprocess.run(
        [str(py_spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30
    )
    return dumped.stdout + dumped.stderr


def _accepts_connections(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_benchmark_stops_its_app_and_frees_its_ports(signum, tmp_path):
    log = (tmp_path / "bench.log").open("w")
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "webrtc", "--sessions", "1", "--turns", "50"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the signal goes to the bench alone, as `kill` would send it
    )
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        serving = None
        while serving is None:
            assert bench.poll() is None, (tmp_path / "bench.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the app never served"
            serving = _app_serving(psutil.Process(bench.pid))
            time.sleep(0.5)  # polling interval
        app, port = serving
        started = psutil.Process(bench.pid).children(recursive=True)

        os.kill(bench.pid, signum)
        try:
            exit_status = bench.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the benchmark still ran {STOP_TIMEOUT:.0f} s after the signal; where it was:\n"
                f"{_stacks(bench.pid)}\n{(tmp_path / 'bench.log').read_text()[-3000:]}"
            )

        _, alive = psutil.wait_procs(started, timeout=15)
        assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
        assert not app.is_running()
        assert not _accepts_connections(port), f"port {port} still accepts connections"
        assert exit_status == 128 + signum  # ended by the signal, after cleaning up
    finally:
        log.close()
        leftovers = [*started, *([psutil.Process(bench.pid)] if bench.poll() is None else [])]
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.slow
async def test_an_app_whose_start_is_abandoned_is_stopped():
    app = AppProcess()
    try:
        with pytest.raises(TimeoutError):
            # Far shorter than the models' warm-up: the app is still starting when this gives up.
            await asyncio.wait_for(app.__aenter__(), timeout=2)
        assert app.process is not None
        assert app.process.poll() is not None, "app.py kept running after its start was abandoned"
    finally:
        app.stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_run_that_loses_its_cancellation_is_cancelled_again(signum, monkeypatch, capfd):
    """A library may catch the cancellation a signal sends; the run must stop all the same."""
    from bench import lifecycle

    monkeypatch.setattr(lifecycle, "RECANCEL_SECS", 0.2)
    got_on: list[bool] = []

    async def main() -> int:
        asyncio.get_running_loop().call_soon(signal.raise_signal, signum)
        with contextlib.suppress(asyncio.CancelledError):  # the first cancellation, lost
            await asyncio.sleep(60)
        got_on.append(True)
        await asyncio.sleep(60)  # the rest of the run, which the next cancellation ends
        return 0

    started = time.monotonic()
    assert lifecycle.run(main()) == 128 + signum
    assert got_on and time.monotonic() - started < 30
    assert "cancelling again" in capfd.readouterr().err
