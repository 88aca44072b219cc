"""Same words, other stack: the last utterance kept, replayed headless, and both turns compared.

Unit tests render the comparison from scripted states and check the bounded
utterance recorder; the integration tests replay a Piper-spoken question
heard by a live local session through the cloud stack (against the fakes)
while that session keeps answering.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import wave
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

from pipeline import events as ev
from pipeline import pricing
from pipeline import same_words as ab_pipeline
from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys
from pipeline.providers.registry import choice_for
from pipeline.same_words import (
    MAX_UTTERANCE_BYTES,
    PREROLL_SECS,
    ABRefused,
    Utterance,
    UtteranceRecorder,
    history_before,
)
from pipeline.session import VoiceSession
from testkit.driver import SessionDriver
from testkit.fakes.groq import DEFAULT_TRANSCRIPT
from testkit.folding import folded
from testkit.speech import SAMPLE_RATE, speech_pcm
from tests import test_providers
from ui import same_words_panel as ab
from ui import state
from ui.settings import config_from_settings, initial_settings

GROQ_KEY, ELEVEN_KEY = test_providers.GROQ_KEY, test_providers.ELEVEN_KEY
LOCAL = ("Local whisper-tiny.en", "Local SmolLM2-135M-Instruct", "Local piper-joe-medium")
CLOUD = ("Groq whisper-large-v3-turbo", "Groq llama-3.1-8b-instant", "ElevenLabs eleven_flash_v2_5")


run = folded


def a_turn(t0: float, heard: str, reply: str, stt: float, llm: float, tts: float, v2v: float):
    return [
        ev.UserStartedSpeaking(t0),
        ev.ServiceTTFB(t0 + 1.0, "stt", "stt#0", None, stt),
        ev.UserTranscript(t0 + 1.0, heard),
        ev.UserStoppedSpeaking(t0 + 1.1),
        ev.UserTurnText(t0 + 1.1, heard),
        ev.BotThinking(t0 + 1.2),
        ev.ServiceTTFB(t0 + 1.3, "llm", "llm#0", None, llm),
        ev.BotToken(t0 + 1.3, reply),
        ev.ServiceTTFB(t0 + 1.5, "tts", "tts#0", None, tts),
        ev.BotStartedSpeaking(t0 + 1.6),
        ev.LatencyMeasured(t0 + 1.6, v2v, (("transcription", stt), ("LLM inference", llm))),
        ev.BotStoppedSpeaking(t0 + 3.0),
        ev.BotTurnText(t0 + 3.0, reply),
    ]


def as_sent(figure) -> dict:
    """The Plotly JSON the page receives for ``figure``, as Gradio's plot sends it."""
    return json.loads(gr.Plot().postprocess(figure).plot)


def cells(html: str, row: str) -> tuple[str, str, str]:
    """(live, other, difference) as the page shows them in the comparison's ``row``."""
    found = re.search(
        rf'<tr data-row="{row}">.*?<td data-side="live">(.*?)</td>'
        r'<td data-side="other">(.*?)</td><td class="ab-delta">(.*?)</td>',
        html,
    )
    assert found, f"no {row} row in {html}"
    return found.group(1), found.group(2), found.group(3)


# -- the comparison, from scripted states -------------------------------------------


def test_both_turns_side_by_side_with_their_stacks_figures_and_differences():
    live = run(
        ev.ProvidersChanged(0, *LOCAL),
        *a_turn(1, "Hello there", "Hi.", 0.5, 0.2, 0.3, 1.4),
        # The comparison is of turn 2, not of the turn that came after it.
        *a_turn(10, "What is the capital of France?", "Paris.", 0.45, 0.12, 0.31, 1.21),
        *a_turn(20, "Thanks", "You're welcome.", 0.6, 0.2, 0.3, 1.9),
    )
    billed = pricing.Usage(
        llm_input_tokens=300, llm_output_tokens=20, tts_characters=120, stt_audio_secs=2.4
    )
    other = run(
        ev.ProvidersChanged(0, *CLOUD),
        *a_turn(1, "What is the capital of France?", "It is Paris.", 0.3, 0.29, 0.17, 0.95),
        *[ev.UsageAmount(2.9, measure, getattr(billed, measure)) for measure in pricing.MEASURES],
    )
    html = ab.render_comparison(ab.turn_figures(live, 2), ab.turn_figures(other, 1), seconds=2.4)

    assert cells(html, "stack")[:2] == (" · ".join(LOCAL), " · ".join(CLOUD))
    assert cells(html, "heard")[:2] == ("What is the capital of France?",) * 2
    assert cells(html, "reply")[:2] == ("Paris.", "It is Paris.")
    assert cells(html, "v2v") == ("1210 ms", "950 ms", "−260 ms")
    assert cells(html, "stt") == ("450 ms", "300 ms", "−150 ms")
    assert cells(html, "llm") == ("120 ms", "290 ms", "+170 ms")
    assert cells(html, "tts") == ("310 ms", "170 ms", "−140 ms")
    cloud_cost = pricing.cost_of(billed, dict(zip(("stt", "llm", "tts"), CLOUD, strict=True)))
    assert cloud_cost > 0
    assert cells(html, "cost")[:2] == ("$0.0000", f"${cloud_cost:.4f}")
    assert "2.4 s of your speech" in html
    # Where the voice-to-voice went, part by part, for both.
    assert re.search(r"transcription.*450 ms.*300 ms", html)
    assert 'data-state="done"' in html and "ab-error" not in html


def test_each_side_gets_the_timeline_of_its_own_turn():
    live = run(
        ev.ProvidersChanged(0, *LOCAL),
        *a_turn(1, "Hello there", "Hi.", 0.5, 0.2, 0.3, 1.4),
        *a_turn(10, "What is the capital of France?", "Paris.", 0.45, 0.12, 0.31, 1.21),
        *a_turn(20, "Thanks", "You're welcome.", 0.6, 0.2, 0.3, 1.9),
    )
    figure = as_sent(ab.turn_timeline(live, 2))
    assert figure["layout"]["title"]["text"].startswith("Turn 2 · 1210 ms voice-to-voice")
    assert [b["label"] for b in figure["layout"]["updatemenus"][0]["buttons"]] == ["Turn 2"]
    gone = as_sent(ab.turn_timeline(live, 7))
    assert gone["layout"]["title"]["text"] == "Turn timeline: speak to see one"


def test_a_speculative_llm_request_counts_for_the_turn_it_answered():
    """An LLM asked at the pause reports its TTFB before the turn is committed."""
    turn = a_turn(1, "Hello", "Hi.", 0.5, 0.2, 0.3, 1.4)
    llm = turn.pop(6)
    turn.insert(1, llm)  # before UserTurnText, while the user turn is still open
    assert ab.turn_figures(run(*turn), 1).llm == 0.2


def test_a_failed_other_stack_shows_its_error_and_dashes_for_what_it_never_measured():
    live = run(ev.ProvidersChanged(0, *LOCAL), *a_turn(1, "Hello", "Hi.", 0.5, 0.2, 0.3, 1.4))
    other = run(
        ev.ProvidersChanged(0, *CLOUD),
        ev.UserStartedSpeaking(1),
        ev.ErrorReported(2, "Groq refused the API key <b>(401)</b>"),
    )
    html = ab.render_comparison(
        ab.turn_figures(live, 1),
        ab.turn_figures(other, 1),
        seconds=1.0,
        error="Groq refused the API key <b>(401)</b>",
    )
    assert 'data-state="error"' in html
    assert 'role="alert">Groq refused the API key &lt;b&gt;(401)&lt;/b&gt;' in html
    assert cells(html, "stack")[1] == " · ".join(CLOUD)
    assert cells(html, "v2v") == ("1400 ms", "—", "")
    assert cells(html, "heard")[1] == "—"


def test_text_from_the_turns_is_escaped():
    live = run(ev.ProvidersChanged(0, *LOCAL), *a_turn(1, "<script>x</script>", "<i>", 1, 1, 1, 1))
    html = ab.render_comparison(ab.turn_figures(live, 1), ab.turn_figures(live, 1), seconds=1)
    assert "<script>" not in html and "&lt;script&gt;" in html and "<i>" not in html


# -- the utterance the session keeps ----------------------------------------------


def frames(seconds: float, value: int = 1000, rate: int = SAMPLE_RATE):
    step = int(rate * 0.02)
    for _ in range(round(seconds / 0.02)):
        yield rate, np.full(step, value, dtype=np.int16)


def test_the_last_turn_is_kept_with_its_lead_in_and_numbered_as_the_state_counts_turns():
    recorder = UtteranceRecorder()
    for rate, samples in frames(3.0, value=1):  # silence before anyone spoke
        recorder.add(rate, samples)
    recorder.observe(ev.UserStartedSpeaking(0))
    for rate, samples in frames(2.0, value=2):
        recorder.add(rate, samples)
    recorder.observe(ev.UserTurnText(0, "Hello"))
    recorder.observe(ev.UserStoppedSpeaking(0))

    first = recorder.last
    assert first is not None and first.turn == 1 and not first.too_long
    assert first.seconds == pytest.approx(PREROLL_SECS + 2.0, abs=0.021)
    audio = np.frombuffer(first.pcm, np.int16)
    assert set(audio[: int(PREROLL_SECS * SAMPLE_RATE) - 320]) == {1}
    assert set(audio[-int(2.0 * SAMPLE_RATE) :]) == {2}

    recorder.observe(ev.UserStartedSpeaking(0))
    for rate, samples in frames(1.0, value=3):
        recorder.add(rate, samples)
    assert recorder.last is first, "the last complete turn stays until the next one ends"
    recorder.observe(ev.UserTurnText(0, "Again"))
    recorder.observe(ev.UserStoppedSpeaking(0))
    assert recorder.last.turn == 2 and recorder.last.pcm.endswith(np.int16(3).tobytes())

    recorder.clear()  # the session ended
    assert recorder.last is None and recorder.held_bytes == 0


def test_a_sixty_second_monologue_is_not_kept_and_holds_bounded_memory():
    recorder = UtteranceRecorder()
    recorder.observe(ev.UserStartedSpeaking(0))
    peak = 0
    for rate, samples in frames(60.0):
        recorder.add(rate, samples)
        peak = max(peak, recorder.held_bytes)
    recorder.observe(ev.UserTurnText(0, "a long story"))
    recorder.observe(ev.UserStoppedSpeaking(0))
    assert peak <= MAX_UTTERANCE_BYTES
    assert recorder.last.too_long and recorder.last.pcm == b""
    assert recorder.held_bytes == 0


def test_the_other_llm_sees_the_conversation_before_the_utterance_as_a_copy():
    messages = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
        {"role": "assistant", "content": "Ada."},
    ]
    before = history_before(messages, 2)
    assert before == messages[:2]
    before[0]["content"] = "changed"
    assert messages[0]["content"] == "My name is Ada.", "the live context was touched"
    assert history_before(messages, 1) == []
    # A turn whose words never reached the context: everything came before it.
    assert history_before(messages, 3) == messages


# -- refusals, before anything runs ------------------------------------------------


def keyless_session(models, utterance: Utterance | None):
    session = VoiceSession(
        reduce=state.reduce,
        initial_state=state.initial_state,
        config_factory=lambda: SessionConfig(keys=ProviderKeys({})),
        settings_from_inputs=config_from_settings,
        models=models,
    )
    session.utterance.last = utterance
    return session


def cloud_choices():
    return {
        "stt": choice_for("groq", "stt"),
        "llm": choice_for("groq", "llm"),
        "tts": choice_for("elevenlabs", "tts"),
    }


async def test_refusals_say_what_to_do():
    some_speech = Utterance(bytes(32000), SAMPLE_RATE, 1)
    no_keys = ProviderKeys({})

    async def refusal(session, choices, keys=no_keys) -> str:
        with pytest.raises(ABRefused) as refused:
            await ab.compare(session, choices, keys, models=None)
        return str(refused.value)

    local = {stage: choice_for("local", stage) for stage in ("stt", "llm", "tts")}
    assert "Say something first" in await refusal(keyless_session(None, None), local)
    too_long = Utterance(b"", SAMPLE_RATE, 1, too_long=True)
    assert "ran over 30 s" in await refusal(keyless_session(None, too_long), local)
    message = await refusal(keyless_session(None, some_speech), cloud_choices())
    assert "No API key for ElevenLabs and Groq (STT, LLM, TTS)" in message
    busy = keyless_session(None, some_speech)
    busy.comparing = True
    assert "already running" in await refusal(busy, local)


# -- the real thing: a live local call, the cloud stack on its last utterance ---------


# The provider fakes as the provider tests start them.
groq = test_providers.groq
elevenlabs = test_providers.elevenlabs


def local_session(models, keys: ProviderKeys) -> VoiceSession:
    local = {stage: choice_for("local", stage) for stage in ("stt", "llm", "tts")}
    return VoiceSession(
        reduce=state.reduce,
        initial_state=state.initial_state,
        config_factory=lambda: SessionConfig(keys=keys, **local),
        settings_from_inputs=config_from_settings,
        models=models,
    )


async def ask(d: SessionDriver, text: str, timeout: float = 45) -> None:
    replies = len(d.events("BotTurnText"))
    await d.play(speech_pcm(text))
    await d.play_silence_until(lambda: len(d.events("BotTurnText")) > replies, timeout)


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as f:
        return f.getnframes() / f.getframerate()


@pytest.mark.slow
async def test_the_cloud_stack_answers_the_same_words_while_the_local_call_goes_on(
    models, groq, elevenlabs, monkeypatch
):
    # Groq's key is the server's own (a Space secret): the run is charged to the session.
    monkeypatch.setenv("GROQ_API_KEY", GROQ_KEY)
    monkeypatch.setenv("VOICE_LAB_SERVER_KEY_SECS", "600")
    keys = ProviderKeys({"groq": GROQ_KEY, "elevenlabs": ELEVEN_KEY})
    question = speech_pcm("What is the capital of France?")
    async with SessionDriver(local_session(models, keys)) as d:
        await ask(d, "What is the capital of France?")
        heard_live = d.events("UserTurnText")[0].text
        utterance = d.session.utterance.last
        assert utterance.turn == 1
        assert len(question) / SAMPLE_RATE < utterance.seconds < len(question) / SAMPLE_RATE + 4

        comparing = asyncio.create_task(ab.compare(d.session, cloud_choices(), keys, models))
        # The call goes on while the other stack works: a turn is still answered.
        await ask(d, "And what about Germany?")
        # The microphone stays open meanwhile, as a browser's does.
        await d.play_silence_until(comparing.done, 60)
        comparison = comparing.result()
        await ask(d, "Thank you very much.")
    assert d.session.utterance.last is None, "the utterance outlived its session"

    assert comparison.result.error is None, comparison.result.error
    # The live call ran locally: all the server-key time is the other stack's run.
    charged = d.events("ServerKeyTime")
    assert charged and 0 < 600 - charged[-1].remaining < 60, charged
    html = comparison.render()
    live_stack, other_stack, _ = cells(html, "stack")
    assert live_stack == " · ".join(LOCAL)
    assert other_stack == " · ".join(CLOUD)
    assert cells(html, "heard")[:2] == (heard_live, DEFAULT_TRANSCRIPT)
    for row in ("v2v", "llm", "tts"):
        live, other, delta = cells(html, row)
        assert re.fullmatch(r"\d+ ms", live) and re.fullmatch(r"\d+ ms", other), (row, live, other)
        assert re.fullmatch(r"[+−±]\d+ ms", delta)
    # ≈: pipecat reported no STT TTFB for the turn (see the unit test above).
    live_stt, other_stt, _ = cells(html, "stt")
    assert re.fullmatch(r"(≈ )?\d+ ms", live_stt) and re.fullmatch(r"\d+ ms", other_stt)
    assert cells(html, "reply")[1] and cells(html, "reply")[0]
    assert comparison.result.reply_audio_secs > 0.5, "the other stack made no reply audio"
    live_cost, other_cost, _ = cells(html, "cost")
    assert live_cost == "$0.0000" and float(other_cost.lstrip("$")) > 0, (live_cost, other_cost)
    for figure in (comparison.live_timeline, comparison.other_timeline):
        assert as_sent(figure)["layout"]["title"]["text"].startswith("Turn 1 · ")

    # Same words: Groq transcribed the audio the live call heard, not something else.
    (upload,) = groq.requests_to("transcriptions")
    assert wav_seconds(upload.file.data) == pytest.approx(utterance.seconds, abs=2.5)
    # The other LLM answered that turn with nothing of the live call's context added to it.
    (chat,) = groq.requests_to("chat")
    assert [m["role"] for m in chat.messages if m["role"] != "system"] == ["user"]
    # ...and nothing of the other stack's turn reached the live call.
    assert DEFAULT_TRANSCRIPT not in [e.text for e in d.events("UserTurnText")]
    assert len(d.events("BotTurnText")) == 3
    await d.wait_for(lambda: elevenlabs.open_connections == 0 and groq.open_responses == 0, 3)


@pytest.mark.slow
async def test_a_run_past_its_time_limit_is_stopped_and_says_so(models):
    session = local_session(models, ProviderKeys({}))
    session.utterance.last = Utterance(speech_pcm("Hello there.").tobytes(), SAMPLE_RATE, 1)
    local = {stage: choice_for("local", stage) for stage in ("stt", "llm", "tts")}
    comparison = await ab.compare(session, local, ProviderKeys({}), models, timeout=0.5)
    assert comparison.result.error == "The other stack did not finish within 0.5 s."
    assert not session.comparing, "the session stays marked as comparing"


def test_a_quick_reply_waits_for_the_stt_figure_that_pipecat_reports_later():
    """A segmented STT's TTFB comes 2 s after the VAD stop: a reply done sooner waits for it."""
    progress = ab_pipeline._Progress()
    progress.note(ev.UserTurnText(9.0, "Hello"))
    progress.note(ev.BotTurnText(10.0, "Hi."))
    assert not progress.done(11.0)
    assert progress.done(10.0 + ab_pipeline.STT_TTFB_GRACE_SECS + 0.1), "waits for ever"
    progress.note(ev.ServiceTTFB(11.0, "stt", "stt#0", None, 0.4))
    assert progress.done(11.0)
    failed = ab_pipeline._Progress()
    failed.note(ev.ErrorReported(1.0, "Groq refused the API key"))
    assert failed.done(1.0)


async def test_a_page_cannot_compare_a_call_it_does_not_own(models):
    """The button names its call by the WebRTC id the page sends: another page's id is refused."""
    from fastrtc import WebRTC

    from ui.layout import build_ui

    demo = build_ui()
    audio = next(block for block in demo.blocks.values() if isinstance(block, WebRTC))
    shown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", "") == "ab-comparison")
    (click,) = [fn for fn in demo.fns.values() if shown in fn.outputs and fn.name == "on_click"]
    victim = keyless_session(
        models, Utterance(speech_pcm("Hello there.").tobytes(), SAMPLE_RATE, 1)
    )
    audio.handlers["victim-call-id"] = victim
    try:
        local = ["local", None] * 3
        intruder = gr.Request(session_hash="another-visitor")
        answers = [
            a
            async for a in click.fn("victim-call-id", initial_settings(), *local, request=intruder)
        ]
    finally:
        del audio.handlers["victim-call-id"]
    assert len(answers) == 1 and "no call to compare" in answers[0][0]
    assert victim.utterance.last is not None and not victim.comparing


async def test_the_other_stack_waits_for_the_live_call_to_be_between_turns():
    """Pressed while the bot still answers, the run starts once the reply is over."""
    activity = SimpleNamespace(idle=False)
    call = SimpleNamespace(finished=asyncio.Event(), generation=SimpleNamespace(activity=activity))
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, setattr, activity, "idle", True)
    started = loop.time()
    assert await ab_pipeline.wait_between_turns(call, limit=5)
    assert loop.time() - started >= 0.3

    activity.idle = False
    assert not await ab_pipeline.wait_between_turns(call, limit=0.2), (
        "a call that stays busy is waited for"
    )
    loop.call_later(0.1, call.finished.set)
    assert not await ab_pipeline.wait_between_turns(call, limit=5), (
        "a call that ended is not compared"
    )


def test_an_stt_that_reported_no_ttfb_shows_its_transcription_time_marked_as_such():
    """pipecat sometimes reports no STT TTFB for a turn; the breakdown's part still tells."""
    measured = run(ev.ProvidersChanged(0, *CLOUD), *a_turn(1, "Hi", "Hello.", 0.3, 0.2, 0.1, 0.9))
    turn = a_turn(1, "Hi", "Hello.", 0.5, 0.2, 0.3, 1.4)
    unreported = [e for e in turn if not (isinstance(e, ev.ServiceTTFB) and e.stage == "stt")]
    live = ab.turn_figures(run(ev.ProvidersChanged(0, *LOCAL), *unreported), 1)
    assert live.stt == 0.5 and live.stt_estimated
    html = ab.render_comparison(live, ab.turn_figures(measured, 1), seconds=1)
    assert cells(html, "stt") == ("≈ 500 ms", "300 ms", "")
    assert "the STT reported no time to first byte" in html
