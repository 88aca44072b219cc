"""Silero VAD and Smart Turn on one model per process (pipeline.turn_models), with the real models.

The analyzers must hear exactly what pipecat's own would (each session's
Silero state its own), load no model and start no thread per session, and
Smart Turn must judge the same audio however late its frames arrived.
"""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import onnxruntime
import pytest
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.turn.smart_turn import base_smart_turn
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer

from pipeline.turn_models import SileroVAD, SmartTurn
from testkit.speech import SAMPLE_RATE, silence, speech_pcm

FRAME = SAMPLE_RATE // 50  # the transport's 20 ms frames
VAD_START_SECS = 0.2  # pipecat's default: the VAD says "speaking" this long after the voice starts


@pytest.fixture(scope="module")
def turn_models(models):
    return models.turn


def frames(samples: np.ndarray) -> list[bytes]:
    return [samples[i : i + FRAME].tobytes() for i in range(0, len(samples) - FRAME + 1, FRAME)]


def onset(samples: np.ndarray) -> float:
    return float(np.flatnonzero(np.abs(samples) > 300)[0]) / SAMPLE_RATE


def test_the_analyzers_set_what_pipecats_constructors_set(turn_models):
    """Guards a pipecat upgrade: its constructors are bypassed, so a new attribute shows here."""
    ours, theirs = SileroVAD(turn_models, sample_rate=16000), SileroVADAnalyzer(sample_rate=16000)
    own = {"_queue", "_speaking", "samples_heard", "speech_started_at", "speech_stopped_at"}
    assert set(vars(ours)) - own == set(vars(theirs))
    assert set(vars(ours._model)) == set(vars(theirs._model))
    ours_turn = SmartTurn(turn_models, sample_rate=16000)
    theirs_turn = LocalSmartTurnAnalyzerV3(sample_rate=16000)
    assert set(vars(ours_turn)) - {"_shared_executor", "_samples", "_vad"} == set(vars(theirs_turn))


def _recording(voice_confidence, seen: list[float]):
    def judge(buffer):
        confidence = voice_confidence(buffer)
        seen.append(np.asarray(confidence).item())
        return confidence

    return judge


async def test_sessions_sharing_silero_hear_what_pipecats_own_analyzers_hear(turn_models):
    """Two sessions' audio, interleaved frame by frame on one model: the same verdicts as alone."""
    streams = [
        np.concatenate([silence(0.5), speech_pcm(text), silence(0.5)])
        for text in ("What is the capital of France?", "Stop, please wait.")
    ]
    length = min(len(s) for s in streams)
    by = {"ours": [], "theirs": []}
    for kind, make in (("ours", lambda: SileroVAD(turn_models)), ("theirs", SileroVADAnalyzer)):
        analyzers = [make() for _ in streams]
        confidences: list[list[float]] = [[] for _ in streams]
        for analyzer, seen in zip(analyzers, confidences, strict=True):
            analyzer.set_sample_rate(SAMPLE_RATE)
            analyzer.voice_confidence = _recording(analyzer.voice_confidence, seen)
        states = [[] for _ in streams]
        for chunks in zip(*(frames(s[:length]) for s in streams), strict=True):
            for analyzer, chunk, out in zip(analyzers, chunks, states, strict=True):
                out.append(await analyzer.analyze_audio(chunk))
        by[kind] = (states, confidences)
        for analyzer in analyzers:
            await analyzer.cleanup()
    assert by["ours"][0] == by["theirs"][0]
    np.testing.assert_allclose(by["ours"][1][0], by["theirs"][1][0], atol=1e-6)
    np.testing.assert_allclose(by["ours"][1][1], by["theirs"][1][1], atol=1e-6)
    assert any(s.name == "SPEAKING" for s in by["ours"][0][0]), "the premise: speech was heard"


def _census() -> tuple[int, int]:
    sessions = sum(isinstance(o, onnxruntime.InferenceSession) for o in gc.get_objects())
    return sessions, threading.active_count()


async def test_a_session_loads_no_model_and_starts_no_thread(turn_models):
    question = np.concatenate([silence(0.5), speech_pcm("What is two plus three?"), silence(0.3)])
    before = _census()
    sessions = [(SileroVAD(turn_models), SmartTurn(turn_models)) for _ in range(5)]
    for vad, turn in sessions:
        vad.set_sample_rate(SAMPLE_RATE)
        turn.set_sample_rate(SAMPLE_RATE)
        for chunk in frames(question):
            state = await vad.analyze_audio(chunk)
            turn.append_audio(chunk, state.name == "SPEAKING")
        verdict, metrics = await turn.analyze_end_of_turn()
        assert verdict == EndOfTurnState.COMPLETE and metrics.probability > 0.5
    assert _census() == before, "(ONNX sessions, threads) grew with the sessions"
    for vad, turn in sessions:
        await vad.cleanup()
        await turn.cleanup()


class _Arrivals:
    """pipecat's clock for BaseSmartTurn: the time each frame reached the analyzer."""

    perf_counter = staticmethod(time.perf_counter)  # what pipecat times the inference with

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _VAD:
    """What SmartTurn reads of the session's VAD (pipeline.turn_models.SileroVAD)."""

    samples_heard = speech_started_at = speech_stopped_at = 0


QUIET_BEFORE_SECS = 1.5


def _question() -> np.ndarray:
    speech = speech_pcm("What is the capital of France?")
    return np.concatenate([silence(QUIET_BEFORE_SECS), speech, silence(0.5)])


async def _judged(analyzer, *, stall: tuple[float, float] | None = None, news_late: int = 1):
    """Feed the question as the user aggregator would; returns (audio judged, probability).

    Frames arrive every 20 ms, except those from ``stall[0]`` seconds in,
    which are held up for ``stall[1]`` seconds and then arrive all at once
    (an event loop that stalled). The VAD says "speaking" from 0.2 s into the
    voice, "quiet" 0.2 s after it; the turn strategy hears of each
    ``news_late`` frames later (one on an idle machine: the news queues
    behind the frame that made it), and asks for the verdict when it hears
    of the stop.
    """
    judged: list[np.ndarray] = []
    predict = analyzer._predict_endpoint
    analyzer._predict_endpoint = lambda audio: judged.append(audio) or predict(audio)
    analyzer.set_sample_rate(SAMPLE_RATE)
    analyzer.update_vad_start_secs(VAD_START_SECS)
    question = _question()
    voice_ends = QUIET_BEFORE_SECS + len(speech_pcm("What is the capital of France?")) / 16000
    started = round((onset(question) + VAD_START_SECS) * 50)  # the frame the VAD starts at
    stopped = round((voice_ends + 0.2) * 50)  # the frame the VAD stops at
    vad = analyzer._vad if isinstance(analyzer, SmartTurn) else _VAD()
    clock = base_smart_turn.time
    for k, chunk in enumerate(frames(question)[: stopped + news_late]):
        at = k * FRAME / SAMPLE_RATE
        held = stall is not None and stall[0] <= at < stall[0] + stall[1]
        clock.now = 1000.0 + (stall[0] + stall[1] if held else at)
        vad.samples_heard = (k + 1) * FRAME  # the aggregator runs the VAD first
        if k == started:
            vad.speech_started_at = vad.samples_heard
        if k == stopped:
            vad.speech_stopped_at = vad.samples_heard
        analyzer.append_audio(chunk, started + news_late <= k < stopped + news_late)
    _, metrics = await analyzer.analyze_end_of_turn()
    await analyzer.cleanup()
    return judged[0], metrics.probability


async def test_smart_turn_hears_the_same_audio_however_late_its_frames_and_news_arrive(
    turn_models, monkeypatch
):
    monkeypatch.setattr(base_smart_turn, "time", _Arrivals())
    # The loop stalls 0.1 s after the voice starts, for 0.8 s: the VAD's start
    # (0.2 s into the voice) reaches Smart Turn late, with the frames around it.
    stall = (onset(_question()) + 0.1, 0.8)

    idle, idle_p = await _judged(SmartTurn(turn_models, vad=_VAD()))
    for late in ({"stall": stall}, {"news_late": 4}, {"stall": stall, "news_late": 5}):
        audio, probability = await _judged(SmartTurn(turn_models, vad=_VAD()), **late)
        assert np.array_equal(audio, idle), f"{late} changed what Smart Turn heard"
        assert probability == idle_p

    # pipecat's own analyzer hears the same on an idle machine ...
    theirs, _ = await _judged(LocalSmartTurnAnalyzerV3())
    assert np.array_equal(theirs, idle)
    # ... but after the stall loses the quiet before the question and its
    # first word's start, and with late news hears a shifted window: what
    # SmartTurn exists to prevent (should pipecat time its buffer by the
    # audio one day, these fail: retire SmartTurn's timing).
    theirs, _ = await _judged(LocalSmartTurnAnalyzerV3(), stall=stall)
    assert len(theirs) < len(idle) - 0.5 * SAMPLE_RATE
    theirs, _ = await _judged(LocalSmartTurnAnalyzerV3(), news_late=4)
    assert not np.array_equal(theirs, idle)
