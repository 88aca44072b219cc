"""Helpers for the browser tests: ``python app.py`` as a subprocess and a headless Chromium.

Everything stays on 127.0.0.1: the app is told to use loopback-only ICE,
Chromium resolves no host name but 127.0.0.1, and the page may only fetch
from the app (gradio and fastrtc reference a CDN and huggingface.co).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, Playwright

ROOT = Path(__file__).resolve().parent.parent
PROBE_JS = Path(__file__).with_name("browser_probe.js")
# Model warm-up takes ~10 s alone; far longer with other tests hogging the CPU.
APP_START_TIMEOUT = 240.0

BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    # Never route through an HTTP proxy configured in the environment.
    "--no-proxy-server",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_executable() -> str:
    """Chromium is required, not optional: CI installs it, so its absence is a failure."""
    path = os.environ.get("VOICE_LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(
            f"Chromium not found at {path}: install Debian's 'chromium' package "
            "(tests/run.sh does) or point VOICE_LAB_CHROMIUM at a Chromium binary."
        )
    return path


@dataclass
class AppServer:
    url: str
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_since(self, offset: int = 0) -> str:
        with self.log_path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


@contextmanager
def run_app(log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[AppServer]:
    """``python app.py`` from the repository root, as a user starts it; killed afterwards."""
    port = free_port()
    env = {
        **os.environ,
        # Every browser of a test comes from 127.0.0.1: one client, as the app counts.
        "VOICE_LAB_MAX_SESSIONS_PER_CLIENT": "8",
        **(extra_env or {}),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "VOICE_LAB_LOOPBACK_ICE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "ORT_DISABLE_TELEMETRY": "1",
        "VOICE_LAB_LOG_LEVEL": "INFO",
    }
    # The server's own keys would change every stage's default away from local.
    for name in ("GROQ_API_KEY", "ELEVENLABS_API_KEY"):
        env.pop(name, None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = AppServer(f"http://127.0.0.1:{port}/", log_path, process)
    try:
        _wait_until_serving(app)
        yield app
    finally:
        _stop(process)


def _wait_until_serving(app: AppServer) -> None:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + APP_START_TIMEOUT
    while time.monotonic() < deadline:
        if app.process.poll() is not None:
            pytest.fail(
                f"app.py exited with {app.process.returncode} before serving:\n{app.log_since()}"
            )
        try:
            with direct.open(app.url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)  # polling interval, not synchronisation
    pytest.fail(
        f"app.py did not serve {app.url} within {APP_START_TIMEOUT:.0f}s:\n{app.log_since()}"
    )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the app's process group (its own session), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def launch_chromium(
    playwright: Playwright,
    user_data_dir: Path,
    *,
    fake_mic: Path | None = None,
    allow_mic: bool = True,
) -> BrowserContext:
    """Headless Chromium with a fresh profile and a fake microphone.

    ``fake_mic`` is a WAV the microphone plays once, from when the page opens
    it (then silence). With ``allow_mic=False`` nothing answers the permission
    prompt; the microphone still exists, so a refusal is a denial, not "no
    microphone".
    """
    flags = [*BASE_FLAGS, "--use-fake-device-for-media-stream"]
    if allow_mic:
        flags.append("--use-fake-ui-for-media-stream")
    if fake_mic is not None:
        flags.append(f"--use-file-for-fake-audio-capture={fake_mic}%noloop")
    context = playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=chromium_executable(),
        headless=True,
        args=flags,
    )
    context.route(lambda url: not url.startswith("http://127.0.0.1:"), lambda r: r.abort())
    context.add_init_script(path=PROBE_JS)
    return context


def microphone_button(page: Page) -> Locator:
    """fastrtc's first step: "Click to Access Microphone" asks for the microphone."""
    return page.locator("#voice button", has_text="Click to Access Microphone")


def record_button(page: Page) -> Locator:
    """Shown once the microphone is open: labelled "Record" (aria-label "start stream")."""
    return page.locator("#voice button", has_text="Record")


def press_record(page: Page) -> None:
    """What a user does to start talking: allow the microphone, then press Record."""
    microphone_button(page).click()
    record_button(page).click()
