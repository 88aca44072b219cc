"""Frame sequences through pipecat's ``run_test`` produce the UI events a person would see."""

import asyncio

import numpy as np
from pipecat.frames.frames import (
    AggregatedTextFrame,
    ErrorFrame,
    InterimTranscriptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage, LLMUsageMetricsData, TTFBMetricsData
from pipecat.processors.filters.identity_filter import IdentityFilter
from pipecat.processors.frame_processor import FrameDirection
from pipecat.tests.utils import SleepFrame, run_test

from pipeline import events as ev
from pipeline.builder import transport_params
from pipeline.config import SessionConfig
from pipeline.observers import UIEventObserver
from pipeline.transport import FastRTCTransport, SessionOutbox


async def observe(processor, frames, **observer_args) -> list[ev.Event]:
    seen: list[ev.Event] = []
    await run_test(
        processor, frames_to_send=frames, observers=[UIEventObserver(seen.append, **observer_args)]
    )
    return seen


async def test_transcripts_tokens_and_turn_frames_become_events_once_each():
    seen = await observe(
        IdentityFilter(),
        [
            UserStartedSpeakingFrame(),
            InterimTranscriptionFrame("what is", "", "t"),
            TranscriptionFrame("what is the time", "", "t"),
            LLMFullResponseStartFrame(),
            LLMTextFrame("It is "),
            LLMTextFrame("noon."),
            LLMFullResponseEndFrame(),
        ],
    )
    kinds = [e.kind for e in seen]
    assert kinds == [
        "UserStartedSpeaking",
        "UserTranscript",
        "UserTranscript",
        "BotThinking",
        "BotToken",
        "BotToken",
    ]
    assert [(e.text, e.final) for e in seen if e.kind == "UserTranscript"] == [
        ("what is", False),
        ("what is the time", True),
    ]


async def test_metrics_are_reported_per_stage_with_their_model():
    metrics = MetricsFrame(
        data=[
            TTFBMetricsData(processor="llm#0", model="SmolLM2", value=0.12),
            TTFBMetricsData(processor="unknown#0", value=0.5),
            LLMUsageMetricsData(
                processor="llm#0",
                value=LLMTokenUsage(prompt_tokens=30, completion_tokens=12, total_tokens=42),
            ),
        ]
    )
    seen = await observe(IdentityFilter(), [metrics], stages={"llm#0": "llm"})
    assert seen == [
        ev.ServiceTTFB(seen[0].t, "llm", "llm#0", "SmolLM2", 0.12),
        ev.UsageReported(seen[1].t, "llm", 42),
    ]


async def test_errors_travelling_upstream_are_reported():
    seen: list[ev.Event] = []
    await run_test(
        IdentityFilter(),
        frames_to_send=[
            ErrorFrame("Groq refused the API key"),
            ErrorFrame("TTS context 1234 completed with no audio"),
        ],
        frames_to_send_direction=FrameDirection.UPSTREAM,
        observers=[UIEventObserver(seen.append)],
    )
    assert [(e.kind, e.message) for e in seen] == [("ErrorReported", "Groq refused the API key")]


async def test_sentence_events_follow_the_audio_the_listener_hears():
    outbox = SessionOutbox()
    transport = FastRTCTransport(transport_params(SessionConfig()), outbox)

    async def listen():
        while True:
            await outbox.get()

    listener = asyncio.create_task(listen())
    rate = 24000
    second = (np.ones(rate, dtype=np.int16) * 3000).tobytes()
    frames = [
        TTSStartedFrame(context_id="c"),
        AggregatedTextFrame("One second of speech.", "sentence"),
        TTSAudioRawFrame(second, rate, 1, context_id="c"),
        TTSTextFrame("One second of speech.", "sentence"),
        TTSStoppedFrame(context_id="c"),
        SleepFrame(sleep=0.2),
    ]
    seen = await observe(transport.output(), frames, output=transport.output())
    listener.cancel()
    started = next(e for e in seen if e.kind == "BotSentenceStarted")
    spoken = next(e for e in seen if e.kind == "BotSpoken")
    speaking = next(e for e in seen if e.kind == "BotStartedSpeaking")
    assert started.text == spoken.text == "One second of speech."
    # "Heard" comes when the second of audio has played, not when it was made.
    assert 0.8 < spoken.t - speaking.t < 1.3
    assert started.t <= speaking.t + 0.05


def test_events_round_trip_through_json_dicts():
    original = ev.LatencyMeasured(1.5, 0.8, (("transcription", 0.3), ("LLM inference", 0.2)))
    assert ev.from_dict(original.to_dict()) == original


async def test_first_clause_of_a_reply_goes_to_speech_early_then_whole_sentences():
    from pipecat.frames.frames import AggregatedTextFrame as Chunk

    from pipeline.chunking import first_clause_chunker

    # LLM-style tokens: a leading space starts a word; "1,000" and "3:30" come in pieces.
    words = (
        "Well, the ocean covers 1,000 of 3:30 the planet, and it is very deep. It is, too, cold."
    )
    tokens = []
    for word in words.split():
        if word in ("1,000", "3:30"):
            tokens += [" " + word[:2], word[2:]]
        else:
            tokens.append(" " + word)
    down, _ = await run_test(
        first_clause_chunker(),
        frames_to_send=[
            LLMFullResponseStartFrame(),
            *[LLMTextFrame(t) for t in tokens],
            LLMFullResponseEndFrame(),
        ],
    )
    chunks = [f.text for f in down if isinstance(f, Chunk)]
    assert chunks == [
        "Well, the ocean covers 1,000 of 3:30 the planet,",
        "and it is very deep.",
        "It is, too, cold.",
    ]
