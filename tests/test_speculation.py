"""Speculative turn-taking through the real pipeline, against the provider fakes.

The fakes answer by what they hear: Groq's Whisper transcribes by how much
speech an upload holds, its chat model echoes the question it was asked. So a
reply started on a guess that turned out wrong is recognisable wherever it
might leak: on screen, in the audio requested from the TTS, in the context.
"""

from __future__ import annotations

import io
import time
import wave

import numpy as np
import pytest
from pipecat.frames.frames import EagerTranscriptionFrame, InterimTranscriptionFrame
from pipecat.tests.utils import SleepFrame, run_test

from pipeline.speculation import EagerFromPartials, UserPausedFrame, UserResumedFrame
from testkit.driver import SessionDriver
from testkit.fakes.common import Latency
from testkit.speech import silence, speech_pcm
from tests import test_providers
from tests.test_providers import config, session_with

# The provider fakes, as the provider tests start them.
groq = test_providers.groq
elevenlabs = test_providers.elevenlabs

pytestmark = pytest.mark.slow

FIRST_WORDS = "What is the capital"
REST = "of France?"
PARTIAL = "what is the capital"
WHOLE = "what is the capital of france"


def voiced_seconds(pcm: np.ndarray) -> float:
    """Seconds of 20 ms frames loud enough to be speech."""
    frames = pcm[: len(pcm) // 320 * 320].astype(np.float32).reshape(-1, 320)
    return float((np.sqrt((frames**2).mean(axis=1)) > 300).sum() * 0.02)


def pcm_of(upload: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(upload)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


def echo(messages: list[dict]) -> str:
    """The reply names the question it answers, so a wrong one is recognisable."""
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return f"You asked {str(question).strip(' ?.').lower()}. Paris."


def user_messages(d: SessionDriver) -> list[str]:
    return [m["content"] for m in d.session.generation.context.messages if m["role"] == "user"]


def bot_messages(d: SessionDriver) -> list[str]:
    return [m["content"] for m in d.session.generation.context.messages if m["role"] == "assistant"]


def shown_bot_text(d: SessionDriver) -> str:
    return " ".join(
        [e.text for e in d.events("BotToken")] + [e.text for e in d.events("BotTurnText")]
    ).lower()


def spoken_text(groq) -> str:
    return " ".join(r.json["input"] for r in groq.requests_to("speech")).lower()


def billed_transcriptions(d: SessionDriver) -> int:
    """Speech-to-text requests the cost meter billed (one usage report each)."""
    return len([e for e in d.events("UsageAmount") if e.measure == "stt_audio_secs"])


def groq_stack(**knobs):
    return config(stt=("groq",), llm=("groq",), tts=("groq",), **knobs)


async def answered(d: SessionDriver, replies: int = 0, timeout: float = 30) -> None:
    await d.play_silence_until(
        lambda: any(e.text for e in d.events("BotTurnText")[replies:]), timeout
    )


async def test_a_speculation_is_adopted_and_its_reply_is_the_answer(models, groq):
    # Whisper answers well inside the VAD's stop window (0.5 s here, so that a
    # loaded machine cannot miss it), so the reply starts before the turn is
    # confirmed; the model takes 0.3 s to a first token.
    groq.stt_latency = Latency(0.03)
    groq.llm_ttft = Latency(0.3)
    groq.transcript = lambda _wav: WHOLE
    groq.reply = echo
    async with SessionDriver(session_with(models, groq_stack(vad_stop_secs=0.5))) as d:
        await d.play(speech_pcm("What is the capital of France?"))
        await answered(d)

        ended = d.events("SpeculationEnded")
        assert [e.adopted for e in ended] == [True], ended
        assert ended[0].saved_ms > 0
        # One LLM call, asked before the turn was confirmed: the reply heard is
        # the speculative one, not a fresh call made after the confirmation.
        chats = groq.requests_to("chat")
        assert len(chats) == 1
        confirmed = d.events("UserStoppedSpeaking")[0].t
        asked = chats[0].received_at - time.monotonic() + time.time()
        assert asked < confirmed, f"asked {confirmed - asked:.3f}s after the turn was confirmed"
        assert "capital of france" in spoken_text(groq)
        assert d.received.audible_after(0)
        assert user_messages(d) == [WHOLE]
        assert bot_messages(d) == [echo([{"role": "user", "content": WHOLE}])]
        # Whisper was asked once for the utterance: the pause's transcript was committed.
        assert len(groq.requests_to("transcriptions")) == 1
        assert billed_transcriptions(d) == 1


def trimmed(pcm: np.ndarray) -> np.ndarray:
    """Speech without the synthesiser's leading and trailing silence."""
    loud = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[loud[0] : loud[-1] + 1]


async def test_a_speculation_is_discarded_when_the_user_goes_on(models, groq):
    # A pause long enough to speculate on (two quiet 32 ms windows), too short
    # for the VAD to stop (set to 0.6 s here, so that this one pause is
    # certain to be neither).
    first, gap, rest = trimmed(speech_pcm(FIRST_WORDS)), silence(0.35), trimmed(speech_pcm(REST))
    partial_voiced = voiced_seconds(first)
    # Whisper hears what was said so far; the model answers at once, so the
    # speculative reply is complete (and held) when the user resumes.
    groq.transcript = lambda wav: (
        WHOLE if voiced_seconds(pcm_of(wav)) > partial_voiced + 0.15 else PARTIAL
    )
    groq.reply = echo
    async with SessionDriver(session_with(models, groq_stack(vad_stop_secs=0.6))) as d:
        await d.play(np.concatenate([first, gap, rest]))
        await answered(d)

        reasons = [(e.adopted, e.reason) for e in d.events("SpeculationEnded")]
        assert (False, "resumed") in reasons, reasons
        assert reasons[-1] == (True, "confirmed"), reasons
        resumed = next(e for e in d.events("SpeculationEnded") if e.reason == "resumed")
        assert resumed.wasted_tokens > 0, "the discarded reply was not generated (and held)"
        wrong = echo([{"role": "user", "content": PARTIAL}]).lower()
        assert wrong not in shown_bot_text(d), "a discarded reply was shown"
        assert wrong not in spoken_text(groq), "a discarded reply was sent to the TTS"
        assert "capital of france" in spoken_text(groq)
        assert user_messages(d) == [WHOLE]
        assert bot_messages(d) == [echo([{"role": "user", "content": WHOLE}])]
        assert len([e for e in d.events("BotTurnText") if e.text]) == 1
        # The transcription of the discarded guess was sent too, and Groq bills it.
        assert billed_transcriptions(d) == len(groq.requests_to("transcriptions")) == 2


async def test_a_speculation_is_discarded_when_the_final_transcript_differs(
    models, groq, elevenlabs
):
    # Scribe realtime's partials say France; its committed transcript, Spain.
    # The last partial comes 0.1 s into the silence, the commit at the VAD
    # stop (0.2 s, plus Silero's own lag): 0.16 s of quiet tail tells them apart.
    def transcript(pcm: bytes) -> str:
        samples = np.frombuffer(pcm, dtype=np.int16)
        tail = int(0.16 * 16000)
        tail_silent = len(samples) > tail and voiced_seconds(samples[-tail:]) == 0
        return "what is the capital of spain" if tail_silent else WHOLE

    elevenlabs.transcript = transcript
    groq.reply = echo
    cfg = config(stt=("elevenlabs",), llm=("groq",), tts=("groq",))
    async with SessionDriver(session_with(models, cfg)) as d:
        await d.play(speech_pcm("What is the capital of France?"))
        await answered(d)

        reasons = [(e.adopted, e.reason) for e in d.events("SpeculationEnded")]
        assert (False, "transcript changed") in reasons, reasons
        assert "france" not in shown_bot_text(d)
        assert "france" not in spoken_text(groq)
        assert "capital of spain" in spoken_text(groq)
        assert user_messages(d) == ["what is the capital of spain"]


async def test_a_streaming_partial_is_offered_again_after_the_user_resumes():
    """Pause, resume, pause again with no newer partial: the same words start a new guess.

    The strategy withdrew the first speculation when the user resumed, so the
    second pause must offer the partial again, or the turn waits serially.
    """

    def spaced(*frames):
        return [g for f in frames for g in (f, SleepFrame(0.05))]

    def partial(text: str) -> InterimTranscriptionFrame:
        return InterimTranscriptionFrame(text, "", "2026-01-01T00:00:00")

    down, _ = await run_test(
        EagerFromPartials(),
        # Pauses are system frames and overtake queued partials: the sleeps
        # keep the order as spoken.
        frames_to_send=spaced(
            partial("what is the capital"),
            UserPausedFrame(),
            UserResumedFrame(),
            UserPausedFrame(),
            partial("what is the capital"),  # the provider repeats itself: no new offer
            UserResumedFrame(),
            partial("what is the capital of france"),
            UserPausedFrame(),
        ),
        expected_down_frames=None,
    )
    offers = [f.text for f in down if isinstance(f, EagerTranscriptionFrame)]
    assert offers == [
        "what is the capital",
        "what is the capital",
        "what is the capital of france",
    ]


async def test_barge_in_still_stops_the_bot_with_speculation_on(models, groq):
    groq.reply = lambda _m: (
        "Paris is mild today, with a light breeze from the west and a few clouds. "
        "In the afternoon the sun comes out, and the evening stays dry and pleasant. "
        "Tomorrow looks much the same, so there is no need for an umbrella at all."
    )
    async with SessionDriver(session_with(models, groq_stack())) as d:
        await d.play(speech_pcm("What is the weather in Paris?"))
        await d.play_silence_until(lambda: d.events("BotStartedSpeaking"), timeout=30)
        await d.play(silence(0.6))
        await d.play(speech_pcm("Stop, please wait."))
        await d.play_silence_until(lambda: d.events("BotTurnText"), timeout=30)

        cut = d.events("BotTurnText")[0]
        assert cut.interrupted
        assert d.received.cleared >= 1, "fastrtc's queue was not cleared"
        # Only what was heard stays in the context (whole sentences that played).
        assert " ".join(bot_messages(d)[:1]) == cut.text
        assert groq.reply([]) not in " ".join(bot_messages(d))
        # The interruption is a turn of its own (two, if the VAD stops at its
        # comma), and it is answered.
        await d.play_silence_until(
            lambda: [e for e in d.events("BotTurnText")[1:] if e.text and not e.interrupted], 30
        )
        assert len(user_messages(d)) >= 2


async def test_switching_speculation_off_restores_the_serial_turn(models, groq):
    groq.stt_latency = Latency(0.03)
    groq.transcript = lambda _wav: WHOLE
    groq.reply = echo
    async with SessionDriver(session_with(models, groq_stack(speculative=False))) as d:
        await d.play(speech_pcm("What is the capital of France?"))
        await answered(d)

        assert not d.events("SpeculationStarted")
        assert not d.events("SpeculationEnded")
        confirmed = d.events("UserStoppedSpeaking")[0].t
        asked = groq.requests_to("chat")[0].received_at - time.monotonic() + time.time()
        assert asked >= confirmed, "the LLM was asked before the turn was confirmed"
        assert bot_messages(d) == [echo([{"role": "user", "content": WHOLE}])]


async def test_a_tool_call_never_runs_speculatively(models, groq):
    """A speculative reply that wants a tool is withdrawn; the confirmed turn runs the tool once."""
    from pipeline.tools.installer import database_of

    # Whisper answers inside the VAD's stop window, so the inference that
    # wants the tool starts before the turn is confirmed.
    groq.stt_latency = Latency(0.03)
    groq.transcript = lambda _wav: "Please cancel my order 4821."
    async with SessionDriver(session_with(models, groq_stack(vad_stop_secs=0.5))) as d:
        await d.play(speech_pcm("Please cancel my order four eight two one."))
        await d.play_silence_until(
            lambda: any("cancelled" in e.text for e in d.events("BotTurnText")), 45
        )

        reasons = [(e.adopted, e.reason) for e in d.events("SpeculationEnded")]
        assert (False, "tool call") in reasons, reasons
        calls = [e for e in d.events("ToolCallStarted") if e.name == "cancel_order"]
        assert len(calls) == 1
        assert calls[0].t >= d.events("UserStoppedSpeaking")[0].t, "the tool ran speculatively"
        db = database_of(d.session.generation.context)
        done = db.execute("SELECT count(*) FROM actions WHERE order_number = '4821'")
        assert done.fetchone()[0] == 1
