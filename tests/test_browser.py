"""The app as a user meets it: ``python app.py``, headless Chromium, a fake microphone.

Each test gets its own browser against one app process per module. Audio is
judged in the page: WebRTC stats say packets arrived, and a WebAudio analyser
on the remote track (tests/browser_probe.js) says whether they were audible.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, Playwright, expect, sync_playwright

from testkit.app import AppProcess
from testkit.env import fake_provider_env
from testkit.fakes.groq import FakeGroq
from testkit.fakes.native_crash import crashing_llm_runtime
from testkit.loop import serving_in_thread
from testkit.speech import SAMPLE_RATE, silence, speech_pcm
from tests.browser_support import (
    REPLY_TIMEOUT_MS,
    chromium_executable,
    mic_wav,
    microphone_button,
    open_app,
    press_record,
    quiet_mic,
    speak,
    speech_onset_secs,
    wait_in_page,
    wait_until_listening,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A fake microphone plays its file from the moment the page opens it, but the
# session only listens once Record connected it and its pipeline started
# (~2-3 s here): the question in the file must start later than that.
LEAD_IN_SECS = 6.0
# RMS of the remote track: exactly 0 when nothing plays, ~0.1 for the bot's speech.
AUDIBLE_RMS = 0.02
# How long the bot has been heard before the user talks over it: well into the
# reply, yet short of its end (the system prompt asks for one or two sentences,
# so even the story request can get a reply of only ~4 s).
INTERRUPT_AFTER_SECS = 2.0
# Barge-in to silence as heard in the page: the pipeline's ~0.4 s plus both
# WebRTC legs and jitter buffers; 0.5-0.8 s measured here, 1.5 s seen under load.
STOPS_WITHIN_SECS = 2.5
# A pause this long is not one between sentences: the bot really stopped.
STOPPED_FOR_SECS = 1.0


GROQ_KEY = "gsk_browser_test_key_0123456789"


@pytest.fixture(scope="module")
def groq() -> Iterator[FakeGroq]:
    """A Groq stand-in the app can be switched to (it has no key of its own: stays local)."""
    with serving_in_thread(FakeGroq(api_key=GROQ_KEY)) as fake:
        yield fake


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, groq) -> Iterator[AppProcess]:
    chromium_executable()  # fail before spending a minute on the app
    log = tmp_path_factory.mktemp("app") / "app.log"
    with AppProcess(log, extra_env=fake_provider_env(groq, keys=False)) as server:
        yield server


@pytest.fixture
def app(request, app_server: AppProcess) -> Iterator[AppProcess]:
    """The app, printing what it logged during the test if the test failed.

    Printed in teardown, so pytest shows it under "Captured stdout teardown".
    """
    # Every test starts with every slot free: all its pages share one client
    # address, which may hold only so many connections. A closed page frees its
    # slot within seconds (the tab-closing test holds the app to that); 45 s
    # outlasts ICE consent, the last resort of a connection nobody closed.
    app_server.wait_until_idle(timeout=45)
    offset, failed_before = app_server.log_size(), request.session.testsfailed
    yield app_server
    if request.session.testsfailed > failed_before:
        log = app_server.log_since(offset)
        print(f"--- {app_server.log_path} during this test ---\n{log}")


@pytest.fixture
def pw() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


def ask_for_a_long_story(page: Page, tmp_path: Path) -> float:
    """Record, wait until the session listens, then ask for a long reply; returns speak()'s time."""
    press_record(page)
    wait_until_listening(page)
    question = speech_pcm("Tell me a long story about a brave knight and a dragon.")
    return speak(page, tmp_path / "question.wav", np.concatenate([question, silence(0.5)]))


def answer_with_groq(page: Page, *stages: str) -> None:
    """Type the visitor's Groq key and pick Groq (the fake) for ``stages`` ("llm", "tts")."""
    page.locator("#groq-key input").fill(GROQ_KEY)
    page.locator("#groq-key input").press("Enter")
    expect(page.locator("#settings")).to_contain_text("Groq: your key (this session only)")
    for stage in stages:
        picker = page.locator(f"#{stage}-provider")
        picker.locator("input").click()
        picker.get_by_role("option", name="Groq").click()
        expect(picker.locator("input")).to_have_value(re.compile("Groq"))


def speak_over_a_long_story(page: Page, tmp_path: Path) -> float:
    """Ask for a long story, then say "Stop, please wait." over it; returns speak()'s time.

    The interruption comes once the bot has been audible for a while, over a
    word rather than into a pause between sentences.
    """
    ask_for_a_long_story(page, tmp_path)
    wait_in_page(
        page,
        f"(t => t !== null && performance.now() - t > {INTERRUPT_AFTER_SECS * 1000}"
        f" && __voiceProbe.levels.at(-1)[1] > {AUDIBLE_RMS})"
        f"(__voiceProbe.firstAudibleAt({AUDIBLE_RMS}))",
        REPLY_TIMEOUT_MS + INTERRUPT_AFTER_SECS * 1000,
        f"the bot did not speak for {INTERRUPT_AFTER_SECS}s (the reply ended or never came)",
    )
    interruption = np.concatenate([speech_pcm("Stop, please wait."), silence(0.5)])
    return speak(page, tmp_path / "stop.wav", interruption)


def levels_until(page: Page, horizon_ms: float) -> list[list[float]]:
    """The probe's levels of the bot's audio, once they reach page time ``horizon_ms``."""
    wait_in_page(
        page,
        f"__voiceProbe.levels.at(-1)[0] > {horizon_ms}",
        10_000,
        "the remote audio track stopped being sampled",
    )
    return page.evaluate("__voiceProbe.levels")


def silence_start(levels: list[list[float]], after_ms: float, gap_ms: float) -> float | None:
    """Page time (ms) the remote audio fell silent for ``gap_ms``, looking from ``after_ms``."""
    last_loud = after_ms
    for t, rms in levels:
        if t < after_ms or rms <= AUDIBLE_RMS:
            continue
        if t - last_loud >= gap_ms:
            return last_loud
        last_loud = t
    return last_loud if levels and levels[-1][0] - last_loud >= gap_ms else None


def audible_spans(levels: list[list[float]], origin_ms: float) -> list[tuple[float, float]]:
    """Stretches of remote audio, in seconds from ``origin_ms``: for failure messages."""
    spans: list[list[float]] = []
    for t, rms in levels:
        if rms <= AUDIBLE_RMS:
            continue
        at = round((t - origin_ms) / 1000, 2)
        if spans and at - spans[-1][1] < 0.15:
            spans[-1][1] = at
        else:
            spans.append([at, at])
    return [(start, end) for start, end in spans]


def test_spoken_question_appears_and_is_answered_aloud(pw, app, tmp_path):
    """The question comes from the fake microphone's file: Chromium's real capture path."""
    question = speech_pcm("What is the capital of France?")
    mic = mic_wav(tmp_path / "mic.wav", silence(LEAD_IN_SECS), question, silence(12.0))

    with open_app(pw, app, tmp_path, fake_mic=mic) as page:
        press_record(page)
        ready_after = wait_until_listening(page)
        assert ready_after < LEAD_IN_SECS - 0.5, (
            f"the session took {ready_after:.1f}s to start listening, so it missed the start"
            f" of the question (at {LEAD_IN_SECS}s in the microphone file)"
        )

        conversation = page.locator("#conversation")
        expect(conversation).to_contain_text(re.compile("capital", re.I), timeout=REPLY_TIMEOUT_MS)
        expect(conversation).to_contain_text(re.compile("france", re.I))
        bot_turn = page.locator("#conversation [data-role=bot]").first
        expect(bot_turn).to_contain_text(re.compile(r"\w{2,}"), timeout=REPLY_TIMEOUT_MS)

        # The turn is shown once the reply has played, so its audio has arrived.
        inbound = page.evaluate("__voiceProbe.inboundAudio()")
        assert inbound and inbound["packetsReceived"] > 0 and inbound["bytesReceived"] > 0, (
            f"no reply audio reached the browser: {inbound}"
        )
        max_rms = page.evaluate("__voiceProbe.maxRms")
        assert max_rms > 2 * AUDIBLE_RMS, f"reply audio arrived but was silent (max RMS {max_rms})"
        pair = page.evaluate("__voiceProbe.selectedPair()")
        assert pair == {"local": "127.0.0.1", "remote": "127.0.0.1"}, pair


def test_speaking_over_the_bot_stops_its_audio(pw, app, tmp_path):
    """Both utterances are spoken on cue, into the call, rather than from the mic's file.

    Fixed gaps in a file would race the session's start-up and the reply's
    latency, which vary with the machine's load; speaking on cue (once the
    session listens, then once the bot has been heard for a while) cannot.
    """
    silent_mic = quiet_mic(tmp_path)

    with open_app(pw, app, tmp_path, fake_mic=silent_mic) as page:
        spoke_at = speak_over_a_long_story(page, tmp_path)

        conversation = page.locator("#conversation")
        expect(conversation.locator("[data-role=user]").last).to_contain_text(
            re.compile("stop", re.I), timeout=REPLY_TIMEOUT_MS
        )
        expect(conversation.locator("[data-role=bot]").first).to_contain_text(
            "(interrupted)", timeout=REPLY_TIMEOUT_MS
        )
        horizon_ms = spoke_at + (STOPS_WITHIN_SECS + STOPPED_FOR_SECS) * 1000
        levels = levels_until(page, horizon_ms)

    heard = audible_spans(levels, spoke_at)
    quiet_at = silence_start(levels, spoke_at, STOPPED_FOR_SECS * 1000)
    assert quiet_at is not None, f"the bot never fell silent after the interruption: {heard}"
    stopped_after = (quiet_at - spoke_at) / 1000
    assert stopped_after < STOPS_WITHIN_SECS, (
        f"the bot kept talking {stopped_after:.2f}s after the user started speaking: {heard}"
    )


def test_denied_microphone_is_explained_in_plain_words(pw, app, tmp_path):
    with open_app(pw, app, tmp_path, allow_mic=False) as page:
        # Deny explicitly rather than rely on how headless answers the prompt.
        page.context.new_cdp_session(page).send(
            "Browser.setPermission",
            {
                "permission": {"name": "microphone"},
                "setting": "denied",
                "origin": app.url.rstrip("/"),
            },
        )
        microphone_button(page).click()
        expect(page.locator("#status")).to_contain_text(
            re.compile(r"microphone (access )?was (denied|blocked)", re.I), timeout=10_000
        )


def test_live_view_shows_words_reply_highlight_and_latency(pw, app, tmp_path):
    """Interim words while speaking, a reply growing in steps, a moving highlight, then charts."""
    silent_mic = quiet_mic(tmp_path)
    request = speech_pcm(
        "Please tell me a long story about a brave knight who lives in a castle "
        "by the sea and a friendly dragon from the mountains."
    )
    with open_app(pw, app, tmp_path, fake_mic=silent_mic) as page:
        press_record(page)
        wait_until_listening(page)
        page.evaluate("__voiceProbe.watchLiveView()")
        spoke_at = speak(page, tmp_path / "request.wav", np.concatenate([request, silence(0.5)]))
        speech_ends_at = spoke_at + (len(request) / SAMPLE_RATE - speech_onset_secs(request)) * 1000

        bot_turn = page.locator("#conversation [data-role=bot]").first
        # A story can take the whole 80-token reply: ~25 s of speech after the question.
        expect(bot_turn).to_contain_text(re.compile(r"\w{2,}"), timeout=3 * REPLY_TIMEOUT_MS)
        seen = page.evaluate("__voiceProbe.liveView")

        interim_while_speaking = [text for t, text in seen["interim"] if t < speech_ends_at]
        assert interim_while_speaking, f"no interim words while the user spoke: {seen['interim']}"
        # The interim words are the words Whisper went on to hear (which ones
        # depends on the machine's load: never assert exact speech).
        heard = page.locator("#conversation [data-role=user]").first.inner_text().lower()
        interim_words = set(re.findall(r"[a-z']{4,}", " ".join(interim_while_speaking).lower()))
        final_words = set(re.findall(r"[a-z']{4,}", heard))
        assert interim_words & final_words, (interim_while_speaking, heard)

        growing = [text for _, text in seen["reply"]]
        assert len(growing) >= 3, f"the reply did not grow in steps: {growing}"
        assert len(growing[-1]) > len(growing[0])

        highlights = [text for _, text in seen["highlight"]]
        assert highlights, "no sentence was highlighted while the bot spoke"
        final_reply = bot_turn.inner_text()
        assert highlights[0].split()[0] in final_reply
        if len(re.findall(r"[.!?](\s|$)", final_reply)) >= 2:
            assert len(set(highlights)) >= 2, f"the highlight did not move: {highlights}"

        # After the turn: a bar in the breakdown, points on the TTFB lines, a ms figure.
        wait_in_page(
            page,
            "document.querySelectorAll('#latency-breakdown .barlayer .point').length > 0"
            " && document.querySelectorAll('#ttfb-chart .scatterlayer .point').length > 0",
            10_000,
            "the latency charts hold no point for the turn",
        )
        expect(page.locator("#latency-stats")).to_contain_text(re.compile(r"\d+ ms"))


def test_closing_the_tab_mid_reply_ends_the_session_and_frees_its_slot(pw, app, tmp_path):
    """A closed tab sends no goodbye the server acts on; its audio simply stops."""
    silent_mic = quiet_mic(tmp_path)
    with open_app(pw, app, tmp_path, fake_mic=silent_mic) as page:
        ask_for_a_long_story(page, tmp_path)
        wait_in_page(
            page,
            "document.querySelector('#status [data-status]')?.dataset.status === 'speaking'",
            REPLY_TIMEOUT_MS,
            "the bot never started speaking",
        )
        log_offset = app.log_size()
        closed_at = time.time()
        page.close()

    deadline = time.monotonic() + 10
    while "session finished" not in app.log_since(log_offset) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a log file: there is no event to await across processes
    finished = re.search(
        r"^(\S+ \S+),(\d{3}) INFO pipeline.session: session finished",
        app.log_since(log_offset),
        re.M,
    )
    assert finished, (
        f"the session was still running 10 s after the tab closed:\n{app.log_since(log_offset)}"
    )
    logged_at = datetime.strptime(finished.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
    gone_after = logged_at + int(finished.group(2)) / 1000 - closed_at
    assert gone_after < 2.0, f"the session outlived its tab by {gone_after:.2f}s"
    # Its slot is free again well before ICE consent would have expired (~30 s):
    # the visitor who reloads is not refused.
    try:
        app.wait_until_idle(timeout=10)
    except TimeoutError as e:
        raise AssertionError(f"the closed tab still holds its slot: {e}") from None


def test_switching_the_llm_between_turns_labels_the_next_turn(pw, app, groq, tmp_path):
    """Type a key, pick Groq in the LLM dropdown: the next turn runs on it, same call."""
    silent_mic = quiet_mic(tmp_path)
    with open_app(pw, app, tmp_path, fake_mic=silent_mic) as page:
        press_record(page)
        wait_until_listening(page)
        question = np.concatenate([speech_pcm("What is the capital of France?"), silence(0.5)])
        speak(page, tmp_path / "first.wav", question)
        conversation = page.locator("#conversation")
        expect(conversation.locator("[data-role=bot]").first).to_contain_text(
            re.compile(r"\w{2,}"), timeout=REPLY_TIMEOUT_MS
        )
        expect(conversation.locator("[data-role=user]").first).to_contain_text("Local")

        answer_with_groq(page, "llm")
        expect(page.locator("#status")).to_contain_text(
            "Groq llama-3.1-8b-instant", timeout=REPLY_TIMEOUT_MS
        )

        speak(page, tmp_path / "second.wav", question)
        second = conversation.locator("[data-role=user]").nth(1)
        expect(second).to_contain_text("Groq llama-3.1-8b-instant", timeout=REPLY_TIMEOUT_MS)
        # The Groq fake's answer quotes the question it was sent.
        expect(conversation.locator("[data-role=bot]").nth(1)).to_contain_text(
            re.compile("you asked.*capital", re.I), timeout=REPLY_TIMEOUT_MS
        )
        assert groq.requests_to("chat"), "the switched turn never reached the Groq fake"
        # The same call all along: the switch did not reconnect.
        assert page.evaluate("__voiceProbe.connections.length") == 1


def test_a_crashing_local_llm_leaves_the_page_up_and_a_cloud_llm_answering(pw, groq, tmp_path):
    """The local LLM's native runtime segfaults on this "machine": the app starts anyway,
    the page says which local stage is out and why, and Groq answers in its place."""
    crashing = crashing_llm_runtime(tmp_path / "crashing-runtime")
    env = {"PYTHONPATH": str(crashing), **fake_provider_env(groq, keys=False)}
    with AppProcess(tmp_path / "app.log", extra_env=env) as crashed_app:
        with open_app(pw, crashed_app, tmp_path, fake_mic=quiet_mic(tmp_path)) as page:
            health = page.locator("#local-health")
            expect(health).to_contain_text("Local LLM (SmolLM2 on llama.cpp) unavailable")
            expect(health).to_contain_text("SIGSEGV")
            expect(health).to_contain_text("cloud providers still work")
            expect(page.locator("#llm-provider input")).to_have_value("Local (unavailable here)")

            answer_with_groq(page, "llm")
            press_record(page)
            wait_until_listening(page)
            question = np.concatenate([speech_pcm("What is the capital of France?"), silence(0.5)])
            speak(page, tmp_path / "question.wav", question)
            expect(page.locator("#conversation [data-role=bot]").first).to_contain_text(
                re.compile("you asked.*capital", re.I), timeout=REPLY_TIMEOUT_MS
            )
        assert "crashed (SIGSEGV)" in crashed_app.log_since()


def heard_row(page: Page, measure: str, shown: re.Pattern):
    """The #heard-latency row of the page's first ``measure`` figure, once it is filed and shown."""
    wait_in_page(
        page,
        f"__heardLatency.sent.some(([m]) => m === '{measure}')",
        REPLY_TIMEOUT_MS,
        f"the page measured no {measure}",
    )
    row = page.locator(f"#heard-latency tr[data-measure={measure}]").first
    expect(row).to_contain_text(shown)
    return row


def test_the_page_measures_the_reply_as_heard_next_to_the_servers_v2v(pw, app, tmp_path):
    """#heard-latency: mic quiet -> bot audible, timed in the page and filed with the turn."""
    silent_mic = quiet_mic(tmp_path)
    question = speech_pcm("What is the capital of France?")
    with open_app(pw, app, tmp_path, fake_mic=silent_mic) as page:
        press_record(page)
        wait_until_listening(page)
        spoke_at = speak(page, tmp_path / "question.wav", np.concatenate([question, silence(0.5)]))
        voiced = np.flatnonzero(np.abs(question) > 1000)
        speech_ends_at = spoke_at + (voiced[-1] - voiced[0]) / SAMPLE_RATE * 1000

        row = heard_row(page, "reply", re.compile(r"\d+ ms"))
        shown = row.inner_text()
        expect(page.locator("#latency-stats")).to_contain_text("heard p50")
        sent = page.evaluate("__heardLatency.sent")
        levels = page.evaluate("__voiceProbe.levels")

    assert sent and sent[0][0] == "reply", sent
    heard_ms = sent[0][1]
    assert f"{heard_ms:.0f} ms" in shown, (shown, sent)
    # The probe's own reading (20 ms RMS samples of the remote track; the speech's
    # end from the clip) agrees with what the page's script measured and sent.
    first_audible = next(t for t, rms in levels if t > speech_ends_at and rms > AUDIBLE_RMS)
    probe_ms = first_audible - speech_ends_at
    assert abs(heard_ms - probe_ms) < 150, f"page {heard_ms} ms, probe {probe_ms:.0f} ms"


# The page script's rule (assets/heard_latency.js): the bot quiet this long has stopped.
HEARD_STOPPED_GAP_MS = 400


def test_the_page_measures_a_barge_in_as_heard_next_to_the_servers_stop(pw, app, groq, tmp_path):
    """#heard-latency: the user's voice onset -> the bot silent, timed in the page."""
    silent_mic = quiet_mic(tmp_path)
    with open_app(pw, app, tmp_path, fake_mic=silent_mic) as page:
        # The reply comes from the Groq fake, synthesised before it is paced out: the
        # local Piper, sharing two cores with Whisper transcribing the interruption,
        # can fall silent for 0.4 s just as the user starts, and then no one (the
        # page or the probe) can say which silence was the stop.
        speeches_before = len(groq.requests_to("speech"))
        answer_with_groq(page, "llm", "tts")
        spoke_at = speak_over_a_long_story(page, tmp_path)

        row = heard_row(page, "barge-in", re.compile(r"stop \d+ ms"))
        shown = row.inner_text()
        sent = dict(page.evaluate("__heardLatency.sent"))
        horizon_ms = spoke_at + sent.get("barge-in", 0) + 2 * HEARD_STOPPED_GAP_MS
        levels = levels_until(page, horizon_ms)
        busy = page.evaluate("[__heardLatency.longestTickMs, __heardLatency.lostStretches]")

    spoken_by_groq = len(groq.requests_to("speech")) > speeches_before
    assert spoken_by_groq, "the local TTS told the story, not the Groq fake"
    assert "barge-in" in sent, sent
    assert f"{sent['barge-in']:.0f} ms" in shown, (shown, sent)
    quiet_at = silence_start(levels, spoke_at, HEARD_STOPPED_GAP_MS)
    assert quiet_at is not None, audible_spans(levels, spoke_at)
    probe_ms = quiet_at - spoke_at
    assert abs(sent["barge-in"] - probe_ms) < 150, (
        f"page {sent['barge-in']} ms, probe {probe_ms} ms; the bot audible at (s from the"
        f" onset) {audible_spans(levels, spoke_at)}; longest tick, lost stretches: {busy}"
    )


def test_same_words_other_stack_compares_the_last_turn_with_groq(pw, app, groq, tmp_path):
    """#ab-comparison: the turn just spoken on the local stack, replayed through Groq's LLM."""
    with open_app(pw, app, tmp_path, fake_mic=quiet_mic(tmp_path)) as page:
        press_record(page)
        wait_until_listening(page)
        question = np.concatenate([speech_pcm("What is the capital of France?"), silence(0.5)])
        speak(page, tmp_path / "question.wav", question)
        expect(page.locator("#conversation [data-role=bot]").first).to_contain_text(
            re.compile(r"\w{2,}"), timeout=REPLY_TIMEOUT_MS
        )
        chats_before = len(groq.requests_to("chat"))

        answer_with_groq(page)
        page.get_by_text("Same words, other stack (A/B)").click()
        page.locator("#ab-llm-provider input").click()
        page.get_by_role("option", name="Groq").click()
        expect(page.locator("#ab-llm-model input")).to_have_value("llama-3.1-8b-instant")
        page.locator("#ab-button").click()

        comparison = page.locator("#ab-comparison")
        expect(comparison.locator("[data-state=done]")).to_be_visible(timeout=REPLY_TIMEOUT_MS)
        stack = comparison.locator("tr[data-row=stack]")
        expect(stack.locator("[data-side=live]")).to_contain_text("Local SmolLM2")
        expect(stack.locator("[data-side=other]")).to_contain_text("Groq llama-3.1-8b-instant")
        for row in ("v2v", "stt", "llm", "tts"):
            for side in ("live", "other"):
                # ≈: pipecat reported no STT TTFB; the transcription part of V2V is shown.
                expect(comparison.locator(f"tr[data-row={row}] [data-side={side}]")).to_have_text(
                    re.compile(r"^(≈ )?\d+ ms$" if row == "stt" else r"^\d+ ms$")
                )
        for side in ("live", "other"):
            expect(comparison.locator(f"tr[data-row=cost] [data-side={side}]")).to_have_text(
                re.compile(r"^\$\d+\.\d{4}$")
            )
            expect(page.locator(f"#ab-timeline-{side}")).to_contain_text("Turn 1 ·")
            wait_in_page(
                page,
                f"document.querySelectorAll('#ab-timeline-{side} .barlayer .point').length > 0",
                10_000,
                f"the {side} turn's timeline holds no bar",
            )
        # The Groq fake's answer quotes what it was asked: the words the call heard.
        heard = comparison.locator("tr[data-row=heard] [data-side=live]").inner_text()
        expect(comparison.locator("tr[data-row=reply] [data-side=other]")).to_contain_text(
            heard.strip().rstrip("?.!")
        )
        # The live call was not touched: its conversation holds only the one turn.
        expect(page.locator("#conversation [data-role=user]")).to_have_count(1)
    assert len(groq.requests_to("chat")) == chats_before + 1


# --------------------------------------------------------------------------- latency lab


def test_settings_labels_read_on_one_line_wide_and_fit_a_phone(pw, app, tmp_path):
    """Each knob's label is one line at 1400 px; at phone width nothing spills sideways."""
    with open_app(pw, app, tmp_path) as page:
        page.set_viewport_size({"width": 1400, "height": 900})
        settings = page.locator("#settings")
        expect(settings).to_contain_text("VAD stop (s)")
        heights = page.evaluate(
            """() => [...document.querySelectorAll(
                 '#settings [data-testid=block-info], #settings label > span')]
               .filter(l => l.offsetParent && l.innerText.trim())
               .map(l => [l.innerText.trim(), l.getBoundingClientRect().height,
                          parseFloat(getComputedStyle(l).lineHeight) || 20])"""
        )
        assert heights, "no labels found in the settings panel"
        wrapped = [text for text, height, line in heights if height > 1.6 * line]
        assert not wrapped, f"labels wrap at 1400 px: {wrapped}"
        page.set_viewport_size({"width": 390, "height": 800})
        overflow = page.evaluate(
            """() => [...document.querySelectorAll('#settings *')]
               .filter(e => e.offsetParent && e.getBoundingClientRect().right
                            > document.documentElement.clientWidth + 1)
               .map(e => e.tagName + '.' + e.className).slice(0, 5)"""
        )
        assert not overflow, f"settings controls overflow a phone-width window: {overflow}"
        vad = page.locator("#vad-stop input[type=number]")
        expect(vad).to_be_visible()


def plot_summary(page: Page, name: str) -> dict:
    """What a chart shows: its title, its turn menu, and the points of each visible trace."""
    return page.evaluate(
        """name => {
             const plot = document.querySelector(`#${name} .js-plotly-plot`);
             if (!plot || !plot.data) return null;
             const menu = (plot.layout.updatemenus || [])[0];
             return {
               title: (plot.layout.title || {}).text || '',
               menu: menu ? menu.buttons.map(b => b.label) : [],
               points: plot.data.filter(t => t.visible !== false)
                                .map(t => (t.x || []).filter(x => x !== null).length),
             };
           }""",
        name,
    )


def test_a_spoken_turn_fills_the_timeline_and_a_cloud_llm_costs_dollars(pw, app, groq, tmp_path):
    """After a turn on Groq's LLM (the fake): the timeline has its lanes, #cost a $ figure,
    and replaying the exported session brings every dashboard view back the same."""
    with open_app(pw, app, tmp_path, fake_mic=quiet_mic(tmp_path)) as page:
        page.set_viewport_size({"width": 1400, "height": 1000})
        answer_with_groq(page, "llm")
        press_record(page)
        wait_until_listening(page)
        expect(page.locator("#status")).to_contain_text("Groq", timeout=REPLY_TIMEOUT_MS)
        question = np.concatenate([speech_pcm("What is the capital of France?"), silence(0.5)])
        speak(page, tmp_path / "question.wav", question)
        expect(page.locator("#conversation [data-role=bot]").first).to_contain_text(
            re.compile(r"\w{2,}"), timeout=REPLY_TIMEOUT_MS
        )

        timeline = page.locator("#turn-timeline")
        for lane in ("You", "VAD", "Smart Turn", "STT", "LLM", "TTS", "Bot audio"):
            expect(timeline.locator(".ytick text", has_text=lane)).to_have_count(1)
        wait_in_page(
            page,
            "document.querySelectorAll('#turn-timeline .barlayer .point').length >= 6"
            " && document.querySelector('#turn-timeline .scatterlayer .js-line')",
            10_000,
            "the timeline drew no bars or no VAD line for the turn",
        )
        expect(timeline).to_contain_text("Turn 1")  # the turn menu and the title
        # A cloud LLM's tokens are priced: a dollar figure above zero for this turn.
        this_turn = page.locator("#cost .stat", has_text="this turn").locator(".stat-value")
        expect(this_turn).to_have_text(re.compile(r"^\$0\.0*[1-9]\d*$"), timeout=10_000)
        expect(page.locator("#cost")).to_contain_text("Priced on")

        page.locator("#voice button", has_text="Stop").click()
        expect(page.locator("#status")).to_contain_text("ended", timeout=10_000)
        shown = {name: page.locator(f"#{name}").inner_text() for name in HTML_VIEWS}
        charts = {name: plot_summary(page, name) for name in CHART_VIEWS}

        page.locator("#export-button").click()
        link = page.locator("#export-file a").first
        expect(link).to_be_visible(timeout=10_000)
        with page.expect_download() as download:
            link.click()
        exported = tmp_path / "session.json"
        download.value.save_as(exported)
        page.reload()
        expect(page.locator("#turn-timeline")).to_contain_text("speak to see one")
        page.locator("input[type=file][accept*='.json']").set_input_files(str(exported))
        expect(page.locator("#turn-timeline")).to_contain_text("Turn 1", timeout=10_000)
        for name in HTML_VIEWS:
            assert page.locator(f"#{name}").inner_text() == shown[name], f"#{name} differs"
        for name in CHART_VIEWS:
            assert plot_summary(page, name) == charts[name], f"#{name} differs after replay"


HTML_VIEWS = ("conversation", "latency-stats", "cost")
CHART_VIEWS = ("latency-breakdown", "ttfb-chart", "turn-timeline")
