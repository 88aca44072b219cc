"""One session's spans: pipecat's service spans under our conversation and the dashboard's turns.

    conversation (one per session, across provider switches)
      turn (the dashboard's turn number; from the user's voice to the reply's last audio)
        stt, llm, tts       pipecat's spans (``enable_tracing``), TTFB in ``metrics.ttfb``
        tool, speculation, barge-in, heard      ours, from the session's events

pipecat's ``TurnTraceObserver`` is not used (``enable_turn_tracking=False``):
its turns start at the pipeline's start and end 2.5 s after the bot stops
(early when a tool call pauses the reply, late otherwise), restart at 1 in
every pipeline generation, and a provider switch would start a new
conversation. Instead one pipecat ``TracingContext`` per session is handed
to every generation's worker (:func:`pipeline.telemetry.tracing.share_tracing_context`),
and :class:`SessionTrace` sets its conversation and turn from the session's
events, so pipecat's service spans nest under our turns. A turn ends at its
last activity once the next one starts (or the session ends), so it neither
ends before a tool call's answer nor runs on through the silence after it.
The session's end closes every span still open: none is left orphaned.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, Status, StatusCode
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.utils.tracing.tracing_context import TracingContext

from pipeline import events as ev
from pipeline.server_settings import worker_id
from pipeline.telemetry.tracing import Tracing, otlp_json, scrubbed
from pipeline.telemetry.view import DashboardView

# Spans kept per session for "Download trace" (a long, busy session makes ~10 a turn).
MAX_SESSION_SPANS = 1000
# Turns whose span context is remembered for late children (a heard latency, a tool's end).
REMEMBERED_TURNS = 16
# The VAD reports speech this long after it began (pipecat's default start_secs).
VAD_START_SECS = VADParams().start_secs


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


@dataclass
class _Turn:
    span: trace.Span
    number: int
    last: float
    committed: bool = False
    speech_end: float | None = None
    barge_in: trace.Span | None = None
    barge_in_at: float | None = None
    ttfb: dict[str, list[float]] = field(default_factory=dict)


class SessionTrace:
    """One session's spans, opened and closed from its events (see the module docstring).

    ``view`` is the session's :class:`DashboardView`, read before it folds each
    event, so turn numbers and barge-ins are the dashboard's.
    """

    def __init__(self, session_id: str, view: DashboardView, setup: Tracing):
        self.session_id = session_id
        self.context = TracingContext()
        self.spans: deque[ReadableSpan] = deque(maxlen=MAX_SESSION_SPANS)
        self._view = view
        self._tracer = setup.tracer
        self._store = setup.sessions
        self.keep_content = setup.keep_content
        self._conversation: trace.Span | None = None
        self._trace_id: int | None = None
        self._turn: _Turn | None = None
        # A turn the user barged in on, open until the bot's audio stops.
        self._cut: _Turn | None = None
        self._recent: OrderedDict[int, _Turn] = OrderedDict()
        self._speculation: trace.Span | None = None
        self._tools: dict[str, trace.Span] = {}
        self._handlers: dict[type, Callable] = {
            ev.UserStartedSpeaking: self._user_started,
            ev.UserStoppedSpeaking: self._touch,
            ev.UserTurnText: self._user_turn_text,
            ev.StageSpan: self._stage_span,
            ev.BotThinking: self._touch,
            ev.BotStartedSpeaking: self._touch,
            ev.BotStoppedSpeaking: self._bot_stopped,
            ev.BotTurnText: self._bot_turn_text,
            ev.LatencyMeasured: self._latency,
            ev.ServiceTTFB: self._ttfb,
            ev.ToolCallStarted: self._tool_started,
            ev.ToolCallFinished: self._tool_finished,
            ev.SpeculationStarted: self._speculation_started,
            ev.SpeculationEnded: self._speculation_ended,
            ev.HeardLatency: self._heard,
            ev.ErrorReported: self._error,
            ev.OutputGap: self._output_gap,
            ev.ProvidersChanged: self._providers,
            ev.SessionEnded: self._session_ended,
        }

    @property
    def trace_id(self) -> str | None:
        return None if self._trace_id is None else f"{self._trace_id:032x}"

    def start(self, t: float | None = None) -> None:
        """Open the conversation span: every span of the session belongs to its trace."""
        span = self._tracer.start_span(
            "conversation",
            start_time=_ns(t if t is not None else time.time()),
            attributes={
                "conversation.id": self.session_id,
                "conversation.type": "voice",
                "session.id": self.session_id,
                "voice_lab.worker.id": worker_id(),
                "openinference.span.kind": "CHAIN",
            },
        )
        self._conversation = span
        context = span.get_span_context()
        self.context.set_conversation_context(context, self.session_id)
        if context.trace_flags.sampled:
            self._trace_id = context.trace_id
            self._store.register(context.trace_id, self.spans)

    @property
    def _open_conversation(self) -> trace.Span:
        """The conversation span: :meth:`observe` runs the handlers only once it is open."""
        if self._conversation is None:
            raise RuntimeError("the conversation span is not open: start() first")
        return self._conversation

    def observe(self, event: ev.Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None and self._conversation is not None:
            handler(event)

    # -- turns -----------------------------------------------------------------

    def _user_started(self, e: ev.UserStartedSpeaking) -> None:
        previous, view = self._turn, self._view
        if self._cut is not None and not view.speaking:
            # The bot's stop after a barge-in never came (a failed pipeline): close it anyway.
            self._end_turn(self._cut, max(self._cut.last, self._cut.barge_in_at or 0.0), "barge-in")
            self._cut = None
        if previous is not None:
            if view.speaking:
                # A barge-in: the cut-off turn stays open until the bot's audio stops.
                if self._cut is not None:
                    self._end_turn(self._cut, e.t, "next turn")
                previous.barge_in_at = e.t
                previous.barge_in = self._child(previous, "barge-in", e.t, {})
                self._cut = previous
            elif view.reply_active:
                # Spoke while the reply was being prepared: it is dropped now.
                previous.span.set_attribute("turn.was_interrupted", True)
                self._end_turn(previous, e.t, "user spoke before the reply")
            else:
                self._end_turn(previous, previous.last, "next turn")
        number = view.turns + 1
        stack = view.stack or ("", "", "")
        span = self._tracer.start_span(
            "turn",
            context=self.context.get_conversation_context(),
            start_time=_ns(e.t - VAD_START_SECS),
            attributes={
                "turn.number": number,
                "turn.type": "conversation",
                "conversation.id": self.session_id,
                "session.id": self.session_id,
                "voice_lab.stack.stt": stack[0],
                "voice_lab.stack.llm": stack[1],
                "voice_lab.stack.tts": stack[2],
                "openinference.span.kind": "CHAIN",
            },
        )
        turn = _Turn(span, number, last=e.t)
        self._turn = turn
        self._recent[number] = turn
        while len(self._recent) > REMEMBERED_TURNS:
            self._recent.popitem(last=False)
        self.context.set_turn_context(span.get_span_context())

    def _touch(self, e: ev.Event) -> None:
        if self._turn is not None:
            self._turn.last = max(self._turn.last, e.t)

    def _user_turn_text(self, e: ev.UserTurnText) -> None:
        turn = self._turn
        if turn is None:
            return
        turn.committed = True
        turn.last = max(turn.last, e.t)
        self._append_text(turn.span, "voice_lab.user.text", e.text)

    def _stage_span(self, e: ev.StageSpan) -> None:
        if e.stage == "user" and self._turn is not None:
            self._turn.speech_end = e.end

    def _bot_stopped(self, e: ev.BotStoppedSpeaking) -> None:
        stop = self._view.barge_in_stop(e)
        cut = self._cut
        if stop is not None and cut is not None:
            if cut.barge_in is not None:
                cut.barge_in.set_attribute("voice_lab.barge_in.stop_seconds", stop)
                self._end(cut.barge_in, e.t)
                cut.barge_in = None
            cut.span.set_attribute("turn.was_interrupted", True)
            self._end_turn(cut, e.t, "barge-in")
            self._cut = None
            return
        self._touch(e)

    def _bot_turn_text(self, e: ev.BotTurnText) -> None:
        turn = self._cut if e.interrupted and self._cut is not None else self._turn
        if turn is None:
            return
        if turn is self._turn and not e.interrupted:
            turn.last = max(turn.last, e.t)
        if e.interrupted:
            turn.span.set_attribute("turn.was_interrupted", True)
        self._append_text(turn.span, "voice_lab.bot.text", e.text)

    def _latency(self, e: ev.LatencyMeasured) -> None:
        turn = self._numbered(self._view.turns)
        if turn is None or not turn.span.is_recording():
            return
        turn.span.set_attribute("voice_lab.voice_to_voice_seconds", e.seconds)
        turn.span.set_attribute("turn.user_bot_latency_seconds", e.seconds)
        for label, seconds in e.contributions:
            key = "".join(c if c.isalnum() else "_" for c in label.lower())
            turn.span.set_attribute(f"voice_lab.latency.{key}_seconds", seconds)

    def _ttfb(self, e: ev.ServiceTTFB) -> None:
        share = self._view.ttfb_share(e)
        turn = self._numbered(share.turn)
        if turn is None or not turn.span.is_recording():
            return
        stage = "".join(c for c in e.stage if c.isalnum())
        key = f"{stage}_interrupted" if share.interrupted else stage
        values = turn.ttfb.setdefault(key, [])
        values.append(e.seconds)
        turn.span.set_attribute(f"voice_lab.ttfb.{key}_seconds", tuple(values))

    def _end_turn(self, turn: _Turn, at: float, ended_by: str) -> None:
        if turn.barge_in is not None:
            self._end(turn.barge_in, at)
            turn.barge_in = None
        turn.span.set_attribute("voice_lab.turn.committed", turn.committed)
        turn.span.set_attribute("voice_lab.turn.ended_by", ended_by)
        self._end(turn.span, at)
        if turn is self._turn:
            self._turn = None
            self.context.set_turn_context(None)

    # -- what pipecat has no span for --------------------------------------------

    def _tool_started(self, e: ev.ToolCallStarted) -> None:
        turn = self._numbered(self._view.turns) or self._turn
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": e.name,
            "gen_ai.tool.call.id": e.call_id,
            "gen_ai.tool.call.arguments": e.arguments,
            "openinference.span.kind": "TOOL",
        }
        if len(self._tools) < 64:
            self._tools[e.call_id] = self._child(turn, "tool", e.t, attributes)

    def _tool_finished(self, e: ev.ToolCallFinished) -> None:
        span = self._tools.pop(e.call_id, None)
        if span is None:
            turn = self._numbered(self._view.turns) or self._turn
            span = self._child(turn, "tool", e.t, {"gen_ai.tool.name": e.name})
        span.set_attribute("voice_lab.tool.ok", e.ok)
        span.set_attribute("gen_ai.tool.call.result", e.result)
        if not e.ok:
            span.set_status(Status(StatusCode.ERROR, "the tool call failed"))
        self._end(span, e.t)

    def _speculation_started(self, e: ev.SpeculationStarted) -> None:
        if self._speculation is not None:
            self._end(self._speculation, e.t)
        attributes = {"voice_lab.speculation.text": e.text}
        self._speculation = self._child(self._turn, "speculation", e.t, attributes)

    def _speculation_ended(self, e: ev.SpeculationEnded) -> None:
        span = self._speculation or self._child(self._turn, "speculation", e.t, {})
        self._speculation = None
        span.set_attributes(
            {
                "voice_lab.speculation.outcome": "adopted" if e.adopted else "discarded",
                "voice_lab.speculation.reason": e.reason,
                "voice_lab.speculation.wasted_tokens": e.wasted_tokens,
                "voice_lab.speculation.wasted_chars": e.wasted_chars,
                "voice_lab.speculation.saved_ms": e.saved_ms,
            }
        )
        self._end(span, e.t)

    def _heard(self, e: ev.HeardLatency) -> None:
        turn = self._numbered(self._view.turns)
        seconds = e.ms / 1000
        if turn is not None and e.measure == "reply" and turn.speech_end is not None:
            start = turn.speech_end  # the voice's end: the page's "microphone quiet"
        elif turn is not None and e.measure == "barge-in" and turn.barge_in_at is not None:
            start = turn.barge_in_at - VAD_START_SECS  # the voice's onset
        else:
            start = e.t - seconds
        attributes = {"voice_lab.heard.measure": e.measure, "voice_lab.heard.ms": e.ms}
        self._end(self._child(turn, "heard", start, attributes), start + seconds)

    def _error(self, e: ev.ErrorReported) -> None:
        target = self._turn.span if self._turn is not None else self._open_conversation
        target.add_event("error", {"message": e.message, "fatal": e.fatal}, _ns(e.t))
        if e.fatal:
            self._open_conversation.set_status(Status(StatusCode.ERROR, e.message))

    def _output_gap(self, e: ev.OutputGap) -> None:
        if self._turn is not None:
            self._turn.span.add_event("output gap", {"seconds": e.secs}, _ns(e.t))

    def _providers(self, e: ev.ProvidersChanged) -> None:
        attributes = {"stt": e.stt, "llm": e.llm, "tts": e.tts}
        self._open_conversation.add_event("providers", attributes, _ns(e.t))

    def _session_ended(self, e: ev.SessionEnded) -> None:
        for span in [*self._tools.values(), self._speculation]:
            if span is not None:
                self._end(span, e.t)
        self._tools.clear()
        self._speculation = None
        if self._cut is not None:
            self._end_turn(self._cut, e.t, "session end")
            self._cut = None
        if self._turn is not None:
            self._end_turn(self._turn, self._turn.last, "session end")
        conversation = self._open_conversation
        conversation.set_attribute("voice_lab.turns", self._view.turns)
        conversation.set_attribute("voice_lab.ended_by", e.reason)
        self._end(conversation, e.t)
        self.context.set_conversation_context(None)
        if self._trace_id is not None:
            self._store.unregister(self._trace_id)

    # -- helpers -----------------------------------------------------------------

    def _numbered(self, number: int) -> _Turn | None:
        """The turn span the dashboard files ``number`` under (the latest with that number)."""
        return self._recent.get(number)

    def _child(self, turn: _Turn | None, name: str, t: float, attributes: dict) -> trace.Span:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(self._parent_of(turn)))
        return self._tracer.start_span(
            name, context=parent, start_time=_ns(t), attributes=attributes
        )

    def _parent_of(self, turn: _Turn | None) -> SpanContext:
        return (turn.span if turn is not None else self._open_conversation).get_span_context()

    @staticmethod
    def _end(span: trace.Span, t: float) -> None:
        if span.is_recording():
            start = getattr(span, "start_time", None) or 0
            span.end(end_time=max(_ns(t), start))

    def _append_text(self, span: trace.Span, key: str, text: str) -> None:
        """Content goes in only when it will be kept (the scrubber would drop it anyway)."""
        if not self.keep_content or not span.is_recording() or not text:
            return
        previous = span.attributes.get(key) if hasattr(span, "attributes") else None
        span.set_attribute(key, f"{previous} {text}" if previous else text)

    # -- download ------------------------------------------------------------------

    def open_spans(self) -> list[ReadableSpan]:
        """Copies of the spans still open (the conversation, its turn), closed as of now."""
        now = time.time_ns()
        # Called from a Gradio worker thread while the session may run: copies, not views.
        spans = [self._conversation, self._speculation, *list(self._tools.values())]
        for turn in (self._cut, self._turn):
            if turn is not None:
                spans += [turn.span, turn.barge_in]
        return [
            scrubbed(span, self.keep_content, end_time=now)
            for span in spans
            # The SDK's spans are readable; a tracer that is off makes non-recording ones.
            if isinstance(span, sdk_trace.Span) and span.is_recording()
        ]

    def otlp_json(self) -> dict:
        """The session's spans so far, as the OTLP/JSON a trace viewer imports."""
        return otlp_json([*self.spans, *self.open_spans()])
