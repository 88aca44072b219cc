"""Helpers for the browser tests: a headless Chromium with a fake microphone, the page's buttons.

Everything stays on 127.0.0.1: the app (:class:`testkit.app.AppProcess`) uses
loopback-only ICE, Chromium resolves no host name but 127.0.0.1, and the page
may only fetch from the app (gradio and fastrtc reference a CDN and huggingface.co).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, Playwright

PROBE_JS = Path(__file__).with_name("browser_probe.js")

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


def chromium_executable() -> str:
    """Chromium is required, not optional: CI installs it, so its absence is a failure."""
    path = os.environ.get("VOICE_LAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(
            f"Chromium not found at {path}: install Debian's 'chromium' package "
            "(tests/run.sh does) or point VOICE_LAB_CHROMIUM at a Chromium binary."
        )
    return path


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
