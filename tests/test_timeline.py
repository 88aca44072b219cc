"""The per-turn timeline and output health, from scripted events (pure), and from a real turn."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline import events as ev
from testkit.folding import folded
from ui import render, state, timeline
from ui.turnlog import MAX_TURN_EVENTS, TIMELINE_TURNS


def _stand_in(kind: str, **fields: type) -> type[ev.Event]:
    """The agreed event if it has landed in pipeline.events, else a stand-in of that name.

    The timeline reads speculation and tool events by kind and field names
    (/tmp/briefs/events.md), so a stand-in exercises the same code.
    """
    found = getattr(ev, kind, None)
    if found is not None:
        return found
    cls = dataclass(frozen=True)(type(kind, (ev.Event,), {"__annotations__": fields}))
    return cls


SpeculationStarted = _stand_in("SpeculationStarted", text=str)
SpeculationEnded = _stand_in(
    "SpeculationEnded",
    adopted=bool,
    reason=str,
    wasted_tokens=int,
    wasted_chars=int,
    saved_ms=float,
)
ToolCallStarted = _stand_in("ToolCallStarted", call_id=str, name=str, arguments=str)
ToolCallFinished = _stand_in("ToolCallFinished", call_id=str, name=str, ok=bool, result=str)

T0 = 1_000.0  # a wall-clock-like origin, as events carry


def spoken_turn(t0: float = T0, text: str = "What is the capital of France?") -> list[ev.Event]:
    """One turn as the pipeline reports it (times from a real local run, rounded)."""
    return [
        ev.UserStartedSpeaking(t0 + 0.25),
        ev.UserTranscript(t0 + 0.7, "What is", final=False),
        ev.VADTrace(t0 + 1.35, t0 + 0.0, 0.032, "10a0f0fefefefefefe" + "fe" * 30 + "2008"),
        ev.StageSpan(t0 + 1.35, "user", t0 + 0.05, t0 + 1.15, "speech"),
        ev.StageSpan(t0 + 1.35, "vad", t0 + 1.15, t0 + 1.35, "silence before the VAD stop"),
        ev.UsageAmount(t0 + 1.36, "stt_audio_secs", 1.3),
        ev.TurnDecision(t0 + 1.45, True, 0.98, 100.0),
        ev.ServiceTTFB(t0 + 1.7, "stt", "LocalWhisperSTTService#0", "whisper-tiny.en", 0.35),
        ev.UserTranscript(t0 + 1.7, text),
        ev.UserStoppedSpeaking(t0 + 1.71),
        ev.UserTurnText(t0 + 1.71, text),
        ev.BotThinking(t0 + 1.72),
        *[
            ev.BotToken(t0 + 1.9 + i * 0.02, w + " ")
            for i, w in enumerate(["Paris", "is.", "It", "is"])
        ],
        ev.ServiceTTFB(t0 + 1.9, "llm", "LocalLlamaLLMService#0", "SmolLM2", 0.18),
        ev.BotSentenceStarted(t0 + 2.05, "Paris is."),
        ev.ServiceTTFB(t0 + 2.2, "tts", "LocalPiperTTSService#0", "piper", 0.15),
        ev.BotStartedSpeaking(t0 + 2.2),
        ev.LatencyMeasured(t0 + 2.2, 1.05, (("endpointing wait", 0.2), ("LLM inference", 0.2))),
        ev.StageSpan(t0 + 2.2, "vad", t0 + 1.15, t0 + 1.35, "endpointing wait"),
        ev.StageSpan(t0 + 2.2, "stt", t0 + 1.35, t0 + 1.7, "transcription"),
        ev.StageSpan(t0 + 2.2, "llm", t0 + 1.72, t0 + 1.9, "LLM inference"),
        ev.StageSpan(t0 + 2.2, "tts", t0 + 2.05, t0 + 2.2, "speech synthesis"),
        ev.StageSpan(t0 + 2.6, "tts", t0 + 2.2, t0 + 2.6, "synthesis"),
        ev.UsageAmount(t0 + 2.3, "llm_input_tokens", 60),
        ev.UsageAmount(t0 + 2.3, "llm_output_tokens", 5),
        ev.UsageAmount(t0 + 2.3, "tts_characters", 15),
        ev.OutputGap(t0 + 2.9, 0.12),
        ev.BotSpoken(t0 + 3.1, "Paris is."),
        ev.BotSentenceStarted(t0 + 3.1, "It is"),
        ev.BotSpoken(t0 + 3.8, "It is"),
        ev.BotStoppedSpeaking(t0 + 3.8),
        ev.BotTurnText(t0 + 3.8, "Paris is. It is"),
    ]


def run(*events: ev.Event) -> state.SessionState:
    start = [
        ev.SessionStarted(T0 - 1),
        ev.ProvidersChanged(T0 - 1, "Local a", "Local b", "Local c"),
    ]
    return folded(*start, *events)


def bars(figure, lane: str) -> list[tuple[float, float, str]]:
    """(start ms, end ms, hover text) of the visible bars in ``lane``."""
    y = timeline.LANE_Y[lane]
    found = []
    for trace in figure["data"]:
        if trace["type"] != "bar" or not trace["visible"]:
            continue
        for ty, base, x, text in zip(
            trace["y"], trace["base"], trace["x"], trace["customdata"], strict=True
        ):
            if ty == y:
                found.append((base, base + x, text))
    return found


def marks(figure, lane: str) -> list[tuple[float, str]]:
    y = timeline.LANE_Y[lane]
    data = figure["data"]
    return [
        (x, text)
        for trace in data
        if trace["type"] == "scatter" and trace["mode"] == "markers" and trace["visible"]
        for ty, x, text in zip(trace["y"], trace["x"], trace["customdata"], strict=True)
        if ty == y
    ]


def labelled(spans, words: str) -> list[tuple[float, float, str]]:
    return [span for span in spans if words in span[2]]


def test_every_lane_is_drawn_on_one_axis_from_the_speech_onset():
    figure = timeline.timeline_spec(run(*spoken_turn()))
    layout = figure["layout"]
    assert layout["yaxis"]["ticktext"] == [label for _, label in timeline.LANES]
    # Zero is the user's speech onset: the first speech span starts there.
    (speech,) = bars(figure, "user")
    assert speech[0] == pytest.approx(0) and speech[1] == pytest.approx(1100)
    (stt,) = labelled(bars(figure, "stt"), "transcription")
    assert stt[:2] == pytest.approx((1300, 1650))
    (decision,) = bars(figure, "turn")
    assert "complete, p=0.98" in decision[2] and decision[:2] == pytest.approx((1300, 1400))
    (streaming,) = labelled(bars(figure, "llm"), "LLM streaming")
    assert streaming[:2] == pytest.approx((1850, 1910))
    (first_audio,) = labelled(bars(figure, "tts"), "speech synthesis")
    assert first_audio[:2] == pytest.approx((2000, 2150))
    assert [text for _, text in marks(figure, "stt")] == [
        "interim: What is",
        "final: What is the capital of France?",
    ]


def test_overlapping_work_shows_as_overlap_across_lanes():
    figure = timeline.timeline_spec(run(*spoken_turn()))
    (smart_turn,) = bars(figure, "turn")
    (transcription,) = labelled(bars(figure, "stt"), "transcription")
    # Smart Turn judged the pause while Whisper was still transcribing it.
    assert smart_turn[0] < transcription[1] and transcription[0] < smart_turn[1]
    (synthesis,) = [bar for bar in bars(figure, "tts") if bar[2].startswith("synthesis")]
    (playing,) = labelled(bars(figure, "playback"), "bot audio")
    assert synthesis[0] < playing[1] and playing[0] < synthesis[1]


def test_the_vad_lane_draws_the_speech_probability_within_its_lane():
    figure = timeline.timeline_spec(run(*spoken_turn()))
    (line,) = [t for t in figure["data"] if t.get("mode") == "lines"]
    ys = [y for y in line["y"] if y is not None]
    lane = timeline.LANE_Y["vad"]
    assert len(ys) == 41  # one point per 32 ms window
    assert all(lane - 0.4 <= y <= lane + 0.4 for y in ys)
    assert max(ys) > lane + 0.35 and ys[0] < lane - 0.3  # silent, then clearly speech


def test_the_view_ends_with_the_bots_first_sentence():
    figure = timeline.timeline_spec(run(*spoken_turn()))
    low, high = figure["layout"]["xaxis"]["range"]
    assert low < 0 and 3050 < high < 3100 * 1.05  # first BotSpoken at +3.1 s


def test_underruns_show_in_the_bots_audio_lane_and_the_stats():
    current = run(*spoken_turn())
    figure = timeline.timeline_spec(current)
    (gap,) = labelled(bars(figure, "playback"), "underrun")
    assert gap[:2] == pytest.approx((2730, 2850))
    assert "1 output gap (120 ms)" in figure["layout"]["title"]["text"]
    assert "output gaps" in render.render_stats(current) and "1 (120 ms)" in render.render_stats(
        current
    )


def test_a_dropdown_picks_a_turn_and_the_newest_is_shown_first():
    current = run(*spoken_turn(T0), *spoken_turn(T0 + 10, "And of Spain?"))
    figure = timeline.timeline_spec(current)
    (menu,) = figure["layout"]["updatemenus"]
    assert [b["label"] for b in menu["buttons"]] == ["Turn 1", "Turn 2"]
    assert menu["active"] == 1
    visible = [trace["visible"] for trace in figure["data"]]
    assert visible == menu["buttons"][1]["args"][0]["visible"]
    assert not any(visible[: len(visible) // 2]) and all(visible[len(visible) // 2 :])
    first = menu["buttons"][0]["args"]
    assert first[1]["title.text"].startswith("Turn 1")
    assert any(first[0]["visible"]) and not all(first[0]["visible"])


def test_speculation_and_tool_lanes_draw_the_agreed_events():
    events = spoken_turn()
    events[11:11] = [
        SpeculationStarted(T0 + 1.4, "What is the capital"),
        SpeculationEnded(T0 + 1.7, False, "transcript changed", 4, 0, 0.0),
        SpeculationStarted(T0 + 1.72, "What is the capital of France?"),
        SpeculationEnded(T0 + 1.75, True, "confirmed", 0, 0, 310.0),
        ToolCallStarted(T0 + 1.8, "call-1", "lookup", '{"city": "Paris"}'),
        ToolCallFinished(T0 + 1.85, "call-1", "lookup", True, "Paris is the capital"),
    ]
    figure = timeline.timeline_spec(run(*events))
    discarded, adopted = bars(figure, "speculation")
    assert "discarded (transcript changed)" in discarded[2] and "4 tokens" in discarded[2]
    assert "adopted" in adopted[2] and "310 ms earlier" in adopted[2]
    (tool,) = bars(figure, "tools")
    assert tool[:2] == pytest.approx((1750, 1800)) and "lookup" in tool[2] and "ok" in tool[2]


def test_a_barge_in_without_words_is_a_false_interruption():
    speaking = spoken_turn()[:-4]  # the bot is still talking
    cough = [ev.UserStartedSpeaking(T0 + 3.3), ev.Interrupted(T0 + 3.3)]
    cough += [ev.UserTranscript(T0 + 3.9, "", final=True), ev.UserStoppedSpeaking(T0 + 4.0)]
    current = run(*speaking, *cough)
    assert current.turn_logs.barge_ins == 1
    assert "false interruptions</div>" in render.render_stats(current)
    assert ">1 (100%)<" in render.render_stats(current)
    # Speaking over the bot with words is a real interruption.
    real = run(
        *speaking, *cough[:2], ev.UserTranscript(T0 + 3.9, "Stop"), ev.UserStoppedSpeaking(4)
    )
    assert ">0 (0%)<" in render.render_stats(real)
    later = run(*speaking, *cough, *spoken_turn(T0 + 10))
    assert later.turn_logs.false_interruptions == 1
    labels = [
        b["label"] for b in timeline.timeline_spec(later)["layout"]["updatemenus"][0]["buttons"]
    ]
    assert labels == ["Turn 1", "Turn 2 (no words)", "Turn 2"]


def test_records_are_bounded_however_long_the_session():
    events = [e for i in range(TIMELINE_TURNS + 5) for e in spoken_turn(T0 + i * 10)]
    events += [ev.BotWordStarted(T0 + 1000 + i, "word") for i in range(MAX_TURN_EVENTS + 50)]
    logs = run(*events).turn_logs
    assert len(logs.turns) == TIMELINE_TURNS
    assert len(logs.turns[-1].events) == MAX_TURN_EVENTS
    assert logs.gaps == TIMELINE_TURNS + 5  # totals still count every turn


def test_event_text_is_escaped_in_the_figure():
    hostile = "<img src=x onerror=alert(1)> %{customdata}"
    figure = timeline.timeline_spec(run(*spoken_turn(text=hostile)))
    texts = [text for _, text in marks(figure, "stt")]
    assert any("&lt;img" in text for text in texts)
    assert not any("<img" in text or "%{" in text for text in texts)


@pytest.mark.slow
async def test_a_spoken_turn_reports_every_lane_the_timeline_needs(models):
    """The real local pipeline: Piper speech in; the events the timeline draws come out."""
    from pipeline.session import VoiceSession
    from testkit.driver import SessionDriver
    from testkit.speech import speech_pcm

    session = VoiceSession(reduce=state.reduce, initial_state=state.initial_state, models=models)
    async with SessionDriver(session) as d:
        await d.play(speech_pcm("What is the capital of France?"))
        await d.play_silence_until(lambda: d.events("BotTurnText"), timeout=40)
        figure = timeline.timeline_spec(session.snapshot())

    lanes = {lane for lane, _ in timeline.LANES if bars(figure, lane) or marks(figure, lane)}
    assert {"user", "vad", "turn", "stt", "llm", "tts", "playback"} <= lanes
    (trace,) = d.events("VADTrace")
    levels = [int(trace.levels[i : i + 2], 16) for i in range(0, len(trace.levels), 2)]
    assert max(levels) > 200, "Silero never heard speech in the question"
    assert d.events("TurnDecision"), "Smart Turn's verdict was not reported"
    measures = {e.measure for e in d.events("UsageAmount")}
    assert {"llm_input_tokens", "llm_output_tokens", "tts_characters"} <= measures


# --------------------------------------------------------------------------- the events' sources


async def test_the_output_reports_an_underrun_mid_reply_but_not_the_replys_first_audio():
    from pipecat.frames.frames import (
        MetricsFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        UserStartedSpeakingFrame,
    )
    from pipecat.tests.utils import SleepFrame, run_test

    from pipeline.observers import OutputGapMetricsData
    from tests.test_transport import RATE, make_transport, tone

    def audio(seconds: float) -> TTSAudioRawFrame:
        return TTSAudioRawFrame(tone(seconds), RATE, 1, context_id="c")

    transport, _outbox, _ = make_transport()
    frames = [TTSStartedFrame(context_id="c"), audio(0.2), SleepFrame(sleep=0.5), audio(0.2)]
    # A new turn: its reply's first audio comes after silence by definition.
    frames += [UserStartedSpeakingFrame(), SleepFrame(sleep=0.5), audio(0.2), SleepFrame(0.3)]
    down, _ = await run_test(transport.output(), frames_to_send=frames)
    gaps = [
        data.value
        for frame in down
        if isinstance(frame, MetricsFrame)
        for data in frame.data
        if isinstance(data, OutputGapMetricsData)
    ]
    # 0.5 s of sleep minus the 0.2 s of audio still playing (and its lead): ~0.3 s dry.
    assert len(gaps) == 1 and 0.2 < gaps[0] < 0.45


async def test_the_vad_keeps_each_stretch_of_speechs_probability_and_reports_it_once():
    from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams, VADState

    class ScriptedVAD(VADAnalyzer):
        """Confidences from a script, one per 32 ms window (16 kHz)."""

        def __init__(self, script):
            params = VADParams(start_secs=0.064, stop_secs=0.064, min_volume=0.0)
            super().__init__(sample_rate=16000, params=params)
            self.script = iter(script)

        def num_frames_required(self) -> int:
            return 512

        def voice_confidence(self, buffer) -> float:
            return next(self.script)

    from pipeline.vad_trace import record_vad_confidence

    script = [0.0] * 5 + [0.9] * 10 + [0.1] * 4 + [0.8, 0.0] + [0.0] * 4
    vad = ScriptedVAD(script)
    vad.set_sample_rate(16000)
    reported = []
    record_vad_confidence(vad, reported.append, clock=lambda: 50.0)
    window = b"\0\0" * 512
    states = [await vad.analyze_audio(window) for _ in script]
    assert VADState.SPEAKING in states and states[-1] == VADState.QUIET
    (trace,) = reported  # the blip at the end never became speech: not reported
    levels = [int(trace.levels[i : i + 2], 16) for i in range(0, len(trace.levels), 2)]
    assert levels[:2] == [0, 0]  # a little of the quiet before
    assert levels[2:12] == [229] * 10 and max(levels[12:]) < 30
    assert trace.step == pytest.approx(0.032) and trace.start == pytest.approx(
        50.0 - len(levels) * 0.032
    )


async def test_the_latency_observer_reports_speech_synthesis_verdicts_usage_and_gaps():
    from pipecat.frames.frames import (
        MetricsFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.metrics.metrics import (
        LLMTokenUsage,
        LLMUsageMetricsData,
        STTUsage,
        STTUsageMetricsData,
        TTSUsageMetricsData,
        TurnMetricsData,
    )
    from pipecat.processors.filters.identity_filter import IdentityFilter
    from pipecat.tests.utils import run_test

    from pipeline.observers import OutputGapMetricsData, latency_observer

    seen: list[ev.Event] = []
    metrics = [
        TurnMetricsData(
            processor="t", is_complete=False, probability=0.3, e2e_processing_time_ms=80
        ),
        LLMUsageMetricsData(
            processor="llm",
            value=LLMTokenUsage(prompt_tokens=50, completion_tokens=7, total_tokens=57),
        ),
        STTUsageMetricsData(processor="stt", value=STTUsage(audio_seconds=1.5)),
        TTSUsageMetricsData(processor="tts", value=42),
        OutputGapMetricsData(processor="out", value=0.2),
    ]
    audio = TTSAudioRawFrame(b"\0\0" * 240, 24000, 1, context_id="c")
    await run_test(
        IdentityFilter(),
        frames_to_send=[
            VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=100.0),
            VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=101.5),
            MetricsFrame(data=metrics),
            audio,
            TTSStoppedFrame(context_id="c"),
        ],
        observers=[latency_observer(seen.append)],
    )
    spans = {(e.stage, e.label): (e.start, e.end) for e in seen if e.kind == "StageSpan"}
    assert spans[("user", "speech")] == pytest.approx((99.8, 101.3))
    assert spans[("vad", "silence before the VAD stop")] == pytest.approx((101.3, 101.5))
    assert ("tts", "synthesis") in spans
    (decision,) = [e for e in seen if e.kind == "TurnDecision"]
    assert (decision.complete, decision.probability, decision.ms) == (False, 0.3, 80)
    usage = {e.measure: e.amount for e in seen if e.kind == "UsageAmount"}
    assert usage == {
        "llm_input_tokens": 50,
        "llm_output_tokens": 7,
        "stt_audio_secs": 1.5,
        "tts_characters": 42,
    }
    assert [e.secs for e in seen if e.kind == "OutputGap"] == [0.2]


def test_a_backchannel_over_the_bot_counts_as_a_false_interruption():
    speaking = spoken_turn()[:-4]
    for said, false in (("Uh-huh.", True), ("Mm-hmm, yeah.", True), ("Okay, stop.", False)):
        barge_in = [ev.UserStartedSpeaking(T0 + 3.3), ev.UserTranscript(T0 + 3.9, said)]
        current = run(*speaking, *barge_in, ev.UserStoppedSpeaking(T0 + 4.0))
        assert current.turn_logs.current.false_interruption is false, said
