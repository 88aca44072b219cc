"""The session state the page shows, folded from pipeline events by a pure reducer.

No gradio, no pipecat, no clock reads: ``reduce(state, event)`` depends only on
its arguments, so it is tested from scripted event lists and a recorded
session replays into exactly the same state.

Metrics live in bounded windows (the charts show the most recent turns); the
headline figures are computed over a longer but still bounded window. Every
tuple and text the reducer rebuilds is bounded too, so folding one event costs
at most a constant and a session of any length (or a replayed file) folds in
time linear in its events.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pipeline import events as ev
from ui.turnlog import TurnLogs, fold

Status = Literal[
    "idle",
    "connecting",
    "listening",
    "hearing",
    "thinking",
    "speaking",
    "error",
    "ended",
]
Role = Literal["user", "bot"]

CHART_TURNS = 30  # turns drawn in the charts
STATS_TURNS = 500  # turns the headline percentiles are computed over
# Turns of the conversation kept in the state (the page shows the last 40; an
# export collects every turn as it folds the events).
KEPT_TURNS = 500
# What a page may report as heard (``HeardLatency.measure``).
HEARD_MEASURES = ("reply", "barge-in")
# Longest text the reducer grows by appending (a reply token by token, the
# words of a user turn): about ten minutes of speech.
MAX_TEXT_CHARS = 10_000
# Tool calls kept in the state (the conversation shows those of its visible turns).
KEPT_TOOL_CALLS = 200


@dataclass(frozen=True)
class Providers:
    """The services a turn ran on, as "Provider model" labels."""

    stt: str
    llm: str
    tts: str

    @property
    def label(self) -> str:
        return " · ".join((self.stt, self.llm, self.tts))

    @property
    def short(self) -> str:
        """Provider names only, for chart ticks: "Groq·Groq·ElevenLabs"."""
        return "·".join(part.split(" ", 1)[0] for part in (self.stt, self.llm, self.tts))


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str
    interrupted: bool = False
    # Bot turns cut off by the user: what was generated but never heard.
    unspoken: str = ""
    providers: Providers | None = None


@dataclass(frozen=True)
class BotReply:
    """The reply in progress: what the LLM wrote, what was heard, what is playing now."""

    generated: str = ""
    spoken: str = ""
    speaking: str = ""


@dataclass(frozen=True)
class TurnLatency:
    turn: int
    seconds: float
    contributions: tuple[tuple[str, float], ...]
    interrupted: bool = False
    providers: Providers | None = None
    # Wall-clock seconds the turn's tool calls ran (overlapping calls counted once).
    tool_seconds: float = 0.0
    # "adopted": the reply was generated before the turn was confirmed;
    # "discarded": only discarded speculation(s); "": none.
    speculation: str = ""


@dataclass(frozen=True)
class TTFB:
    turn: int
    stage: str
    service: str
    seconds: float
    # Reported for a request the user interrupted: shown, but kept out of the figures.
    interrupted: bool = False


@dataclass(frozen=True)
class Heard:
    """A latency the visitor's page measured (``HeardLatency``), attributed to a turn.

    ``measure`` "reply": microphone quiet -> bot audible; "barge-in": voice
    onset -> bot silent. The server's figure for the same turn is looked up
    when drawn (the two arrive in either order).
    """

    turn: int
    measure: str
    seconds: float


@dataclass(frozen=True)
class ServerBargeIn:
    """A barge-in as the server saw it: voice detected (VAD) -> the bot's audio stopped."""

    turn: int
    seconds: float


@dataclass(frozen=True)
class ToolCall:
    """A tool the LLM called: shown as a card in the conversation, its time in the turn's figures.

    ``after_turns``: how many turns the conversation held when it was called, which
    is where its card goes. ``ok`` is None while it runs.
    """

    call_id: str
    name: str
    arguments: str
    turn: int
    after_turns: int
    started: float
    finished: float | None = None
    ok: bool | None = None
    result: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else max(0.0, self.finished - self.started)


@dataclass(frozen=True)
class Speculation:
    """How one speculation ended (``SpeculationEnded``), attributed to the user turn it answered."""

    turn: int
    adopted: bool
    reason: str
    wasted_tokens: int = 0
    saved_ms: float = 0.0


@dataclass(frozen=True)
class SpeculationCounts:
    """The session's running count: every speculation started, and how each one ended."""

    started: int = 0
    adopted: int = 0
    discarded: int = 0
    wasted_tokens: int = 0
    wasted_chars: int = 0


@dataclass(frozen=True)
class Usage:
    llm_tokens: int = 0
    tts_characters: int = 0


@dataclass(frozen=True)
class SessionState:
    status: Status = "connecting"
    # The most recent KEPT_TURNS turns; ``turn_count`` counts every turn.
    turns: tuple[Turn, ...] = ()
    turn_count: int = 0
    # The user turn in progress: final transcript pieces, then the latest interim guess.
    user_live: str = ""
    user_interim: str = ""
    bot: BotReply | None = None
    error: str | None = None
    user_turns: int = 0
    interruptions: int = 0
    latency: tuple[TurnLatency, ...] = ()
    ttfb: tuple[TTFB, ...] = ()
    usage: Usage = field(default_factory=Usage)
    # Bumped when a turn's figures are complete, so charts are redrawn only then.
    charts_version: int = 0
    # A barge-in happened and no new reply has started yet.
    interrupting: bool = False
    # The user is speaking a turn that has not been committed yet.
    user_turn_open: bool = False
    # What the next turn runs on (changes between turns when the visitor switches).
    providers: Providers | None = None
    # Seconds left on the server's own API keys (None: not on them, or no limit).
    server_key_remaining: float | None = None
    # Latencies measured in the page (heard) and the server's barge-in stops, bounded.
    heard: tuple[Heard, ...] = ()
    server_barge_ins: tuple[ServerBargeIn, ...] = ()
    # When the server detected the user's voice over the bot (None: no barge-in pending).
    barge_in_detected_at: float | None = None
    # Per-turn records for the timeline, the cost and the output health (ui.turnlog).
    turn_logs: TurnLogs = field(default_factory=TurnLogs)
    # The most recent tool calls, oldest first.
    tool_calls: tuple[ToolCall, ...] = ()
    # Speculative turn-taking: the running count, and the latest outcomes by turn.
    speculation: SpeculationCounts = field(default_factory=SpeculationCounts)
    speculations: tuple[Speculation, ...] = ()


def initial_state() -> SessionState:
    return SessionState()


def reduce(state: SessionState, event: ev.Event) -> SessionState:
    """Fold one event into the state."""
    state = _track_barge_in(state, event)
    state = _fold_turn_logs(state, event)
    state = _fold_tool_calls(state, event)
    match event:
        case ev.SessionStarted():
            return replace(state, status="listening", error=None)
        case ev.ProvidersChanged(stt=stt, llm=llm, tts=tts):
            return replace(state, providers=Providers(stt, llm, tts))
        case ev.UserStartedSpeaking():
            return _user_started(state)
        case ev.UserTranscript(text=text, final=False):
            return replace(state, user_interim=text.strip())
        case ev.UserTranscript(text=text, final=True):
            return replace(state, user_live=_join(state.user_live, text), user_interim="")
        case ev.UserStoppedSpeaking():
            return replace(state, status="thinking")
        case ev.UserTurnText(text=text):
            return replace(
                _add_turn(state, Turn("user", text.strip(), providers=state.providers)),
                user_live="",
                user_interim="",
                user_turns=state.user_turns + 1,
                user_turn_open=False,
                status="thinking",
            )
        case ev.BotThinking():
            return replace(state, bot=BotReply(), interrupting=False)
        case ev.BotToken(text=text):
            bot = state.bot or BotReply()
            return replace(state, bot=replace(bot, generated=_capped(bot.generated + text)))
        case ev.BotSentenceStarted(text=text) if state.bot is not None:
            return replace(state, bot=replace(state.bot, speaking=text.strip()))
        case ev.BotWordStarted(text=text) if state.bot is not None:
            # The word now playing is highlighted; the one before it was heard.
            spoken = _join(state.bot.spoken, state.bot.speaking)
            return replace(state, bot=replace(state.bot, spoken=spoken, speaking=text.strip()))
        case ev.BotSpoken(text=text) if state.bot is not None:
            spoken = _join(state.bot.spoken, text)
            return replace(state, bot=replace(state.bot, spoken=spoken, speaking=""))
        case ev.BotStartedSpeaking():
            # The bot speaking again means a passing error is over.
            return replace(state, status="speaking", error=None)
        case ev.BotStoppedSpeaking() if state.status == "speaking":
            return replace(state, status="listening")
        case ev.BotTurnText():
            return _bot_turn_done(state, event)
        case ev.LatencyMeasured(seconds=seconds, contributions=contributions):
            entry = TurnLatency(state.user_turns, seconds, contributions, False, state.providers)
            entry = replace(
                entry,
                tool_seconds=tool_seconds(state.tool_calls, entry.turn),
                speculation=speculation_mark(state.speculations, entry.turn),
            )
            return _charts_changed(state, latency=(*state.latency, entry)[-STATS_TURNS:])
        case ev.ServiceTTFB():
            return replace(state, ttfb=(*state.ttfb, _ttfb(state, event))[-STATS_TURNS * 3 :])
        case ev.UsageReported(stage="llm", amount=amount):
            usage = replace(state.usage, llm_tokens=state.usage.llm_tokens + amount)
            return replace(state, usage=usage)
        case ev.UsageReported(stage="tts", amount=amount):
            usage = replace(state.usage, tts_characters=state.usage.tts_characters + amount)
            return replace(state, usage=usage)
        case ev.SpeculationStarted():
            counts = replace(state.speculation, started=state.speculation.started + 1)
            return replace(state, speculation=counts)
        case ev.SpeculationEnded():
            return _speculation_ended(state, event)
        case ev.ServerKeyTime(remaining=remaining):
            return replace(state, server_key_remaining=remaining)
        case ev.HeardLatency(measure=measure, ms=ms) if measure in HEARD_MEASURES:
            heard = Heard(state.user_turns, measure, ms / 1000)
            return replace(state, heard=(*state.heard, heard)[-STATS_TURNS:])
        case ev.ErrorReported(message=message, fatal=fatal):
            return replace(state, error=message, status="error" if fatal else state.status)
        case ev.SessionEnded():
            return replace(state, status="error" if state.status == "error" else "ended")
    return state


def _track_barge_in(state: SessionState, event: ev.Event) -> SessionState:
    """The server's side of a barge-in: voice detected over the bot -> its audio stopped.

    Kept beside the heard barge-in (voice onset -> bot silent in the page), so
    the page can show what the network, buffering and playback add.
    """
    match event:
        case ev.UserStartedSpeaking() if state.status == "speaking":
            return replace(state, barge_in_detected_at=event.t)
        case ev.BotStoppedSpeaking() if state.barge_in_detected_at is not None:
            entry = ServerBargeIn(state.user_turns, max(0.0, event.t - state.barge_in_detected_at))
            return replace(
                state,
                server_barge_ins=(*state.server_barge_ins, entry)[-STATS_TURNS:],
                barge_in_detected_at=None,
            )
        case ev.BotStartedSpeaking() | ev.SessionEnded():
            return replace(state, barge_in_detected_at=None)
    return state


def _speculation_ended(state: SessionState, event: ev.SpeculationEnded) -> SessionState:
    counts = state.speculation
    counts = replace(
        counts,
        adopted=counts.adopted + event.adopted,
        discarded=counts.discarded + (not event.adopted),
        wasted_tokens=counts.wasted_tokens + max(0, event.wasted_tokens),
        wasted_chars=counts.wasted_chars + max(0, event.wasted_chars),
    )
    # A speculation answers the turn being spoken (settled before it is committed).
    turn = state.user_turns + 1 if state.user_turn_open else state.user_turns
    outcome = Speculation(turn, event.adopted, event.reason, event.wasted_tokens, event.saved_ms)
    return replace(
        state, speculation=counts, speculations=(*state.speculations, outcome)[-STATS_TURNS:]
    )


def speculation_mark(outcomes: tuple[Speculation, ...], turn: int) -> str:
    """ "adopted", "discarded" or "" for one turn's speculation."""
    mine = [o for o in outcomes[-16:] if o.turn == turn]
    if any(o.adopted for o in mine):
        return "adopted"
    return "discarded" if mine else ""


def _user_started(state: SessionState) -> SessionState:
    # Speaking over the bot (or over a reply still being prepared) is a barge-in.
    barged_in = state.status == "speaking"
    return replace(
        state,
        status="hearing",
        interruptions=state.interruptions + barged_in,
        interrupting=state.interrupting or barged_in or state.bot is not None,
        user_turn_open=True,
    )


def _ttfb(state: SessionState, event: ev.ServiceTTFB) -> TTFB:
    if event.stage == "stt" or (state.user_turn_open and not state.interrupting):
        # Transcribing belongs to the user turn being spoken (its metric comes
        # before the turn is committed) and is never part of a cut-off reply;
        # so does a speculative reply's first token, asked before the turn ended.
        turn = state.user_turns + 1 if state.user_turn_open else state.user_turns
        return TTFB(turn, event.stage, event.model or event.service, event.seconds)
    service = event.model or event.service
    return TTFB(state.user_turns, event.stage, service, event.seconds, state.interrupting)


def _bot_turn_done(state: SessionState, event: ev.BotTurnText) -> SessionState:
    generated = state.bot.generated if state.bot else ""
    spoken = event.text.strip()
    unspoken = unspoken_remainder(generated, spoken) if event.interrupted else ""
    if spoken or unspoken:
        state = _add_turn(state, Turn("bot", spoken, event.interrupted, unspoken))
    latency = state.latency
    if event.interrupted and latency and latency[-1].turn == state.user_turns:
        latency = (*latency[:-1], replace(latency[-1], interrupted=True))
    return _charts_changed(replace(state, bot=None), latency=latency)


def _add_turn(state: SessionState, turn: Turn) -> SessionState:
    return replace(
        state, turns=(*state.turns[-(KEPT_TURNS - 1) :], turn), turn_count=state.turn_count + 1
    )


def _charts_changed(state: SessionState, **changes) -> SessionState:
    return replace(state, charts_version=state.charts_version + 1, **changes)


def unspoken_remainder(generated: str, spoken: str) -> str:
    """The words of ``generated`` after the ones that were ``spoken`` (compared word by word)."""
    words = generated.split()
    return " ".join(words[len(spoken.split()) :])


def pending_text(bot: BotReply) -> str:
    """Generated text not yet spoken nor being spoken."""
    return unspoken_remainder(bot.generated, _join(bot.spoken, bot.speaking))


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, round(q / 100 * (len(ordered) - 1)))]


def _join(left: str, right: str) -> str:
    return _capped(f"{left} {right.strip()}".strip())


def _capped(text: str) -> str:
    """``text`` cut to MAX_TEXT_CHARS, so appending to it costs at most a constant."""
    return text[:MAX_TEXT_CHARS]


def _fold_turn_logs(state: SessionState, event: ev.Event) -> SessionState:
    """The per-turn records (ui.turnlog), folded before the event changes the state."""
    providers = state.providers
    logs = fold(
        state.turn_logs,
        event,
        speaking=state.status == "speaking",
        stack=(providers.stt, providers.llm, providers.tts) if providers else None,
        turn=state.user_turns,
    )
    return state if logs is state.turn_logs else replace(state, turn_logs=logs)


def _fold_tool_calls(state: SessionState, event: ev.Event) -> SessionState:
    """Tool calls: a card per call, and each call's time added to its turn's figures."""
    match event:
        case ev.ToolCallStarted(t=t, call_id=call_id, name=name, arguments=arguments):
            call = ToolCall(call_id, name, arguments, state.user_turns, state.turn_count, t)
            return replace(state, tool_calls=(*state.tool_calls, call)[-KEPT_TOOL_CALLS:])
        case ev.ToolCallFinished(t=t, call_id=call_id, name=name, ok=ok, result=result):
            calls = list(state.tool_calls)
            index = next(
                (i for i in range(len(calls) - 1, -1, -1) if calls[i].call_id == call_id), None
            )
            if index is None:  # its start is older than what the state keeps
                calls.append(ToolCall(call_id, name, "", state.user_turns, state.turn_count, t))
                index = len(calls) - 1
            call = calls[index] = replace(calls[index], finished=t, ok=ok, result=result)
            state = replace(state, tool_calls=tuple(calls[-KEPT_TOOL_CALLS:]))
            latency = state.latency
            if latency and latency[-1].turn == call.turn:
                # A call that outlasted the first audio (the waiting phrase) still counts.
                entry = replace(latency[-1], tool_seconds=tool_seconds(state.tool_calls, call.turn))
                return _charts_changed(state, latency=(*latency[:-1], entry))
    return state


def tool_seconds(calls: tuple[ToolCall, ...], turn: int) -> float:
    """Wall-clock time ``turn``'s finished tool calls ran, overlapping calls counted once."""
    spans = sorted((c.started, c.finished) for c in calls if c.turn == turn and c.finished)
    total, reached = 0.0, float("-inf")
    for start, end in spans:
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total
