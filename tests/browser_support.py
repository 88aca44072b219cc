"""Helpers for the browser tests: a headless Chromium with a fake microphone, the page's buttons.

Everything stays on 127.0.0.1: the app (:class:`testkit.app.AppProcess`) uses
loopback-only ICE, Chromium resolves no host name but 127.0.0.1, and the page
may only fetch from the app (gradio and fastrtc reference a CDN and huggingface.co).
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import BrowserContext, Locator, Page, Playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from testkit.speech import SAMPLE_RATE, silence, write_wav

PROBE_JS = Path(__file__).with_name("browser_probe.js")
# Generous: other CPU-heavy tests may share this machine's two cores.
REPLY_TIMEOUT_MS = 30_000

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


@contextmanager
def open_app(pw: Playwright, app, tmp_path: Path, on_page=None, **chromium) -> Iterator[Page]:
    """``app.url`` in a fresh Chromium; on failure, a screenshot and the page's console.

    ``on_page(page)`` runs before the page loads (to watch every response of it).
    """
    context = launch_chromium(pw, tmp_path / "profile", **chromium)
    console: list[str] = []
    try:
        page = context.pages[0] if context.pages else context.new_page()
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        if on_page is not None:
            on_page(page)
        page.goto(app.url)
        try:
            yield page
        except BaseException:
            with suppress(Exception):  # a crashed page must not hide the failure
                page.screenshot(path=tmp_path / "failure.png")
                print(f"screenshot: {tmp_path / 'failure.png'}")
            print("--- browser console ---\n" + "\n".join(console[-100:]))
            raise
    finally:
        context.close()


def wait_in_page(page: Page, expression: str, timeout_ms: float, failure: str) -> None:
    """``page.wait_for_function`` that fails with a sentence instead of a bare timeout."""
    try:
        page.wait_for_function(expression, timeout=timeout_ms, polling=50)
    except PlaywrightTimeout:
        probe = page.evaluate(
            "({maxRms: __voiceProbe.maxRms, samples: __voiceProbe.levels.length,"
            " connections: __voiceProbe.connections.length, error: __voiceProbe.error,"
            " heard: window.__heardLatency && {sent: __heardLatency.sent,"
            " longestTickMs: __heardLatency.longestTickMs,"
            " lostStretches: __heardLatency.lostStretches}})"
        )
        pytest.fail(
            f"{failure} (probe: {probe}; status: {page.inner_text('#status')!r};"
            f" conversation: {page.inner_text('#conversation')!r})"
        )


def mic_wav(path: Path, *parts: np.ndarray) -> Path:
    return write_wav(path, np.concatenate(parts), SAMPLE_RATE)


def quiet_mic(tmp_path: Path) -> Path:
    """A microphone file of silence outlasting the test, for tests that speak on cue.

    Chromium's fake device stops sending audio when its file ends, which the
    server rightly takes for a closed tab.
    """
    return mic_wav(tmp_path / "mic.wav", silence(90.0))


def wait_until_listening(page: Page) -> float:
    """Waits for the session to be live; returns seconds since the page opened the mic."""
    wait_in_page(
        page,
        "['listening', 'hearing', 'thinking', 'speaking']"
        ".includes(document.querySelector('#status [data-status]')?.dataset.status)",
        REPLY_TIMEOUT_MS,
        "the session never started listening",
    )
    return page.evaluate("performance.now() - __voiceProbe.micOpenedAt") / 1000


def speak(page: Page, path: Path, samples: np.ndarray) -> float:
    """Say ``samples`` into the call now; returns the page time (ms) the words start."""
    wav = base64.b64encode(mic_wav(path, samples).read_bytes()).decode()
    page.evaluate("wav => __voiceProbe.speak(wav)", wav)
    return page.evaluate("__voiceProbe.spokeAt") + speech_onset_secs(samples) * 1000


def speech_onset_secs(samples: np.ndarray) -> float:
    """Where the words start in a Piper clip (it begins with a little silence)."""
    return int(np.argmax(np.abs(samples) > 1000)) / SAMPLE_RATE
