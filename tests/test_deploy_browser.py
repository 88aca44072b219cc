"""Real visitors in headless Chromium against ``python -m deploy``: two workers behind HAProxy.

One deployment, one story, in the order a popular Space lives it (each worker
takes one call, ``VOICE_LAB_MAX_SESSIONS=1``):

1. Two visitors open the page and are placed on different workers; each asks
   a question and is answered: words, audio, the latency dashboard.
2. Every request of each page, its offer and each trickled ICE candidate
   included, was served by that page's worker (the response header), and the
   workers' own logs counted them.
3. A third visitor is refused politely, at once, by the app's own message
   (both workers are full), while both calls carry on.
4. One worker dies mid-call: its visitor's page says the call ended; the other
   call carries on. Once that call ends, a reload puts the first visitor on the
   surviving worker, where they are answered again.
5. Ctrl-C stops the launcher: no process left, no port bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, Response, expect, sync_playwright

from testkit.deploy import DeployProcess, bound_ports
from testkit.speech import silence, speech_pcm
from tests.browser_support import (
    REPLY_TIMEOUT_MS,
    chromium_executable,
    mic_wav,
    open_app,
    press_record,
    speak,
    wait_in_page,
    wait_until_listening,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AUDIBLE_RMS = 0.02
# The whole story takes minutes on a loaded machine: the microphones must outlast it
# (a fake microphone that runs out of file stops sending, which is a closed tab).
MIC_SECS = 420.0
# Chromium reports a peer that stopped answering as "disconnected" after a few seconds.
CALL_ENDED_WITHIN_MS = 45_000


class Visitor:
    """One page, and the worker every response of it came from (from its first load on)."""

    def __init__(self, name: str):
        self.name = name
        self.page: Page | None = None
        self.responses: list[tuple[str, str, str | None, dict | None]] = []

    def watch(self, page: Page) -> None:
        self.page = page
        page.on("response", self._seen)

    def _seen(self, response: Response) -> None:
        request = response.request
        body = None
        if request.method == "POST" and "/gradio_api/component_server" in request.url:
            try:
                body = json.loads(request.post_data or "null")
            except ValueError:
                body = None
        worker = response.headers.get("x-voice-lab-worker")
        self.responses.append((request.method, request.url, worker, body))

    def workers(self, since: int = 0) -> set[str | None]:
        """Who served the page's requests (not the web-app manifest: browsers fetch it
        without cookies, and any worker's 404 for it is the same)."""
        return {
            worker
            for _, url, worker, _ in self.responses[since:]
            if not url.endswith("/manifest.json")
        }

    def component_calls(self, since: int = 0) -> list[dict]:
        return [body for *_, body in self.responses[since:] if isinstance(body, dict)]

    def ice_candidates(self, since: int = 0) -> int:
        return sum(
            1
            for call in self.component_calls(since)
            if isinstance(call.get("data"), dict) and call["data"].get("type") == "ice-candidate"
        )


@contextmanager
def visiting(pw, deploy: DeployProcess, tmp_path: Path, name: str) -> Iterator[Visitor]:
    mic = mic_wav(tmp_path / f"{name}-mic.wav", silence(MIC_SECS))
    (tmp_path / name).mkdir()
    visitor = Visitor(name)
    with open_app(pw, deploy, tmp_path / name, on_page=visitor.watch, fake_mic=mic):
        yield visitor


def ask(visitor: Visitor, tmp_path: Path, text: str) -> None:
    """Say ``text`` into the call; wait for the bot's words and audible audio after it."""
    page = visitor.page
    bot_turns = page.locator("#conversation [data-role=bot]")
    answered = bot_turns.count()
    question = np.concatenate([speech_pcm(text), silence(0.6)])
    spoke_at = speak(page, tmp_path / f"{visitor.name}-{answered}.wav", question)
    expect(bot_turns).to_have_count(answered + 1, timeout=REPLY_TIMEOUT_MS)
    expect(bot_turns.nth(answered)).to_contain_text(re.compile(r"\w{2,}"), timeout=REPLY_TIMEOUT_MS)
    wait_in_page(
        page,
        f"__voiceProbe.levels.some(([t, rms]) => t > {spoke_at} && rms > {AUDIBLE_RMS})",
        REPLY_TIMEOUT_MS,
        f"{visitor.name} heard no reply to {text!r}",
    )


def test_visitors_spread_stick_overflow_and_survive_a_dead_worker(tmp_path: Path):
    chromium_executable()
    deploy = DeployProcess(workers=2, max_sessions=1, log_path=tmp_path / "deploy.log")
    with deploy, sync_playwright() as pw, ExitStack() as pages:
        ports = [deploy.port, *(int(w["url"].rsplit(":", 1)[1]) for w in deploy.workers.values())]
        a = pages.enter_context(visiting(pw, deploy, tmp_path, "a"))
        b = pages.enter_context(visiting(pw, deploy, tmp_path, "b"))
        (worker_a,), (worker_b,) = a.workers(), b.workers()
        assert {worker_a, worker_b} == {"w1", "w2"}, (a.workers(), b.workers())

        # 1. Both answered end to end, each on its own worker.
        for visitor in (a, b):
            press_record(visitor.page)
            wait_until_listening(visitor.page)
            ask(visitor, tmp_path, "What is the capital of France?")
            expect(visitor.page.locator("#latency-stats")).to_contain_text(re.compile(r"\d+ ms"))

        # 2. Sticky for the whole call, offer and ICE candidates included.
        for visitor, worker in ((a, worker_a), (b, worker_b)):
            assert visitor.workers() == {worker}, (visitor.name, visitor.workers())
            calls = visitor.component_calls()
            offers = [c for c in calls if isinstance(c.get("data"), dict) and "sdp" in c["data"]]
            assert len(offers) == 1 and visitor.ice_candidates() >= 1, calls
            served = deploy.requests_served(worker, "POST", "/gradio_api/component_server/")
            assert served >= len(calls), (worker, served, len(calls))

        # 3. Both workers full: a third visitor is refused at once, the calls go on.
        with visiting(pw, deploy, tmp_path, "c") as c:
            press_record(c.page)
            expect(c.page.get_by_text("Too many concurrent connections")).to_be_visible(
                timeout=10_000
            )
        for visitor in (a, b):
            ask(visitor, tmp_path, "How many legs does a spider have?")

        # 4. A's worker dies: A is told, B goes on; a reload puts A on B's worker.
        deploy.kill_worker(worker_a)
        expect(a.page.locator("#status .call-ended")).to_contain_text(
            "The call ended", timeout=CALL_ENDED_WITHIN_MS
        )
        ask(b, tmp_path, "What colour is the sky on a clear day?")
        b.page.locator("#voice button", has_text="Stop").click()
        before_reload = len(a.responses)
        a.page.reload()
        press_record(a.page)
        wait_until_listening(a.page)
        ask(a, tmp_path, "What is two plus three?")
        assert a.workers(before_reload) == {worker_b}, a.workers(before_reload)
        assert not a.page.locator("#status .call-ended").count()

    # 5. Leaving the `with` pressed Ctrl-C (SIGINT) on the launcher: nothing is left.
    assert deploy.process.returncode == 0, deploy.tail()
    assert not deploy.leftovers(), f"still running: {deploy.leftovers()}"
    assert not bound_ports(ports), f"ports still bound: {bound_ports(ports)}"
