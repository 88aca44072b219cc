"""Observers that turn pipecat frames into :mod:`pipeline.events` for the UI.

They never block the pipeline: each callback builds one small event and hands
it to a synchronous sink (the session appends it to a list that a separate
task publishes). Voice-to-voice latency comes from pipecat's own
``UserBotLatencyObserver`` rather than being re-derived here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipecat.frames.frames import (
    AggregatedTextFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import (
    LLMUsageMetricsData,
    MetricsData,
    STTUsageMetricsData,
    TTFBMetricsData,
    TTSUsageMetricsData,
    TurnMetricsData,
)
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.observers.user_bot_latency_observer import (
    LatencyBreakdown,
    MeasuredFrom,
    UserBotLatencyObserver,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from pipeline import events as ev
from pipeline.providers.errors import describe_failure

EventSink = Callable[[ev.Event], None]

# pipecat reports a reply sentence that produced no audio (e.g. one made only of
# symbols) as a soft error; it is worth a log line, not a red message on screen.
_NOT_FOR_USERS = ("completed with no audio",)


class UIEventObserver(BaseObserver):
    """Maps the frames a person would notice to UI events, each frame once.

    Most frames are reported where they are first pushed. The reply text is
    the exception: the paced output transport re-pushes each sentence (or
    word) exactly when its audio starts and finishes playing, so those pushes
    are what time the "being spoken" highlight.
    """

    def __init__(
        self,
        sink: EventSink,
        *,
        output: FrameProcessor | None = None,
        stages: dict[str, str] | None = None,
        providers: dict[str, str] | None = None,
        word_timing: bool = False,
        redact: Callable[[str], str] = str,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(observe_every_push=True)
        self._sink = sink
        self._output = output
        self._stages = stages or {}
        # Service name -> provider label, to say who failed.
        self._providers = providers or {}
        self._redact = redact
        # With word timing the TTS hands over every word at the moment it plays,
        # and its sentence frames carry no timing at all.
        self._word_timing = word_timing
        self._now = clock

    async def on_push_frame(self, data: FramePushed):
        frame = data.frame
        if data.source is self._output and data.direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, TTSTextFrame):
                word = ev.BotWordStarted if self._word_timing else ev.BotSpoken
                self._sink(word(self._now(), frame.text))
                return
            if isinstance(frame, AggregatedTextFrame):
                if not self._word_timing:
                    self._sink(ev.BotSentenceStarted(self._now(), frame.text))
                return
        if not data.first_push:
            return
        # Speaking frames are broadcast both ways as sibling frames; count one.
        if data.direction != FrameDirection.DOWNSTREAM and not isinstance(
            frame, (ErrorFrame, MetricsFrame)
        ):
            return
        if isinstance(frame, MetricsFrame):
            for metric_event in self._metric_events(frame):
                self._sink(metric_event)
            return
        if isinstance(frame, ErrorFrame):
            event = self._error_event(frame, data.source)
        else:
            event = self._event_for(frame)
        if event is not None:
            self._sink(event)

    def _error_event(self, frame: ErrorFrame, source: FrameProcessor) -> ev.Event | None:
        origin = frame.processor or source
        provider = self._providers.get(getattr(origin, "name", "")) or self._providers.get(
            source.name
        )
        # A cloud TTS that sends no audio for a sentence has failed (dropped
        # or stalled connection); the local one only does so for text with
        # nothing to say.
        if not frame.fatal and frame.error.endswith(_NOT_FOR_USERS) and provider in (None, "Local"):
            return None
        message = frame.error
        if provider is not None:
            message = describe_failure(provider, frame.exception, frame.error)
        return ev.ErrorReported(self._now(), self._redact(message), fatal=frame.fatal)

    def _event_for(self, frame) -> ev.Event | None:
        t = self._now()
        match frame:
            case UserStartedSpeakingFrame():
                return ev.UserStartedSpeaking(t)
            case UserStoppedSpeakingFrame():
                return ev.UserStoppedSpeaking(t)
            case InterimTranscriptionFrame():
                return ev.UserTranscript(t, frame.text, final=False)
            case TranscriptionFrame():
                return ev.UserTranscript(t, frame.text, final=True)
            case LLMTextFrame():
                return ev.BotToken(t, frame.text)
            case LLMFullResponseStartFrame():
                return ev.BotThinking(t)
            case BotStartedSpeakingFrame():
                return ev.BotStartedSpeaking(t)
            case BotStoppedSpeakingFrame():
                return ev.BotStoppedSpeaking(t)
            case InterruptionFrame():
                return ev.Interrupted(t)
        return None

    def _metric_events(self, frame: MetricsFrame) -> list[ev.Event]:
        t = self._now()
        events: list[ev.Event] = []
        for data in frame.data:
            stage = self._stages.get(data.processor)
            if stage is None:
                continue
            if isinstance(data, TTFBMetricsData) and data.value > 0:
                events.append(ev.ServiceTTFB(t, stage, data.processor, data.model, data.value))
            elif isinstance(data, LLMUsageMetricsData):
                events.append(ev.UsageReported(t, "llm", data.value.total_tokens))
            elif isinstance(data, TTSUsageMetricsData):
                events.append(ev.UsageReported(t, "tts", data.value))
        return events


# pipecat's breakdown labels -> the timeline lane they belong to ("pipeline" is
# spread over the whole interval, so it has no place on a timeline).
BREAKDOWN_LANES = {
    "endpointing_wait": "vad",
    "transcription": "stt",
    "turn_detection": "turn",
    "llm_inference": "llm",
    "awaiting_speakable_text": "llm",
    "turn_completion": "llm",
    "sentence_aggregation": "llm",
    "llm_tool_call": "llm",
    "function_handler": "tools",
    "speech_synthesis": "tts",
    "output_transport": "playback",
}


class OutputGapMetricsData(MetricsData):
    """The output transport's report of an underrun: ``value`` seconds with nothing to play."""

    value: float


class TimelineLatencyObserver(UserBotLatencyObserver):
    """pipecat's voice-to-voice observer, also reporting what the per-turn timeline draws.

    Besides each turn's breakdown (:class:`~pipeline.events.LatencyMeasured`)
    it reports the breakdown's parts with their start times
    (:class:`~pipeline.events.StageSpan`), each stretch of the user's speech as
    the VAD judged it, the TTS's synthesis from first to last audio, Smart
    Turn's verdicts, billable usage and the output's underruns. Every one is
    a handful of events per turn: per audio frame it only notes a time.
    """

    def __init__(self, sink: EventSink, clock: Callable[[], float] = time.time, **kwargs):
        super().__init__(**kwargs)
        self._sink = sink
        self._clock = clock
        self._speech_from: float | None = None
        self._synthesis: list[float] | None = None

    async def on_push_frame(self, data: FramePushed):
        await super().on_push_frame(data)
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        frame = data.frame
        if isinstance(frame, TTSAudioRawFrame):
            now = self._clock()
            if self._synthesis is None:
                self._synthesis = [now, now]
            self._synthesis[1] = now
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._speech_from = frame.timestamp - frame.start_secs
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            silence = frame.timestamp - frame.stop_secs
            if self._speech_from is not None:
                self._span("user", self._speech_from, silence, "speech")
            self._span("vad", silence, frame.timestamp, "silence before the VAD stop")
            self._speech_from = None
        elif isinstance(frame, TTSStoppedFrame | InterruptionFrame) and self._synthesis:
            self._span("tts", self._synthesis[0], self._synthesis[1], "synthesis")
            self._synthesis = None
        elif isinstance(frame, MetricsFrame):
            for metric in frame.data:
                self._metric(metric)

    def _span(self, lane: str, start: float, end: float, label: str) -> None:
        self._sink(ev.StageSpan(self._clock(), lane, start, end, label))

    def _metric(self, data: MetricsData) -> None:
        now = self._clock()
        match data:
            case TurnMetricsData():
                self._sink(
                    ev.TurnDecision(
                        now, data.is_complete, data.probability, data.e2e_processing_time_ms
                    )
                )
            case LLMUsageMetricsData():
                self._sink(ev.UsageAmount(now, "llm_input_tokens", data.value.prompt_tokens))
                self._sink(ev.UsageAmount(now, "llm_output_tokens", data.value.completion_tokens))
            case TTSUsageMetricsData():
                self._sink(ev.UsageAmount(now, "tts_characters", data.value))
            case STTUsageMetricsData():
                self._sink(ev.UsageAmount(now, "stt_audio_secs", data.value.audio_seconds))
            case OutputGapMetricsData():
                self._sink(ev.OutputGap(now, data.value))


def latency_observer(sink: EventSink) -> UserBotLatencyObserver:
    """pipecat's voice-to-voice observer, reporting each turn's breakdown and timeline as events.

    The pipeline worker only creates one when tracing is on, so we make our own.
    """
    observer = TimelineLatencyObserver(sink)

    @observer.event_handler("on_latency_breakdown")
    async def _on_breakdown(_observer, breakdown: LatencyBreakdown):
        if breakdown.measured_from != MeasuredFrom.USER_SILENCE:
            return
        contributions = tuple((c.label, c.duration_secs) for c in breakdown.contributions)
        sink(ev.LatencyMeasured(time.time(), breakdown.total_secs, contributions))
        for c in breakdown.contributions:
            lane = BREAKDOWN_LANES.get(c.key)
            if lane is not None:
                end = c.start_time + c.duration_secs
                sink(ev.StageSpan(time.time(), lane, c.start_time, end, c.label))

    return observer


class SessionObservers(BaseObserver):
    """Our observers behind one pipecat observer, with the microphone's frames filtered out.

    pipecat gives each observer a queue and a task of its own and queues
    every frame push and every processed frame to each: with three observers
    that dispatch was ~40% of an idle session's CPU, paid 50 times a second
    per hop for microphone frames none of them reads. One observer here means
    one queue hop per event, and input audio stops at the first ``isinstance``.
    """

    def __init__(self, observers: list[BaseObserver]):
        super().__init__(observe_every_push=any(o.observe_every_push for o in observers))
        self._observers = observers
        self._every_push = [o for o in observers if o.observe_every_push]
        self._processed = [
            o for o in observers if type(o).on_process_frame is not BaseObserver.on_process_frame
        ]

    async def on_push_frame(self, data: FramePushed):
        if isinstance(data.frame, InputAudioRawFrame):
            return
        for observer in self._observers if data.first_push else self._every_push:
            await observer.on_push_frame(data)

    async def on_process_frame(self, data: FrameProcessed):
        if isinstance(data.frame, InputAudioRawFrame):
            return
        for observer in self._processed:
            await observer.on_process_frame(data)

    async def on_pipeline_started(self):
        for observer in self._observers:
            await observer.on_pipeline_started()

    async def on_processor_setup(self, data):
        for observer in self._observers:
            await observer.on_processor_setup(data)

    async def cleanup(self):
        for observer in self._observers:
            await observer.cleanup()
        await super().cleanup()
