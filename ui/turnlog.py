"""Per-turn records for the timeline, the cost and the output health, folded from events.

Pure, like :mod:`ui.state` (which calls :func:`fold` for every event): no
gradio, no pipecat, no clock reads. A turn record opens when the user starts
speaking and collects the events its timeline draws (reply tokens only as the
first and last token's times), its billable usage and its underruns. Only the
last :data:`TIMELINE_TURNS` records are kept, each with at most
:data:`MAX_TURN_EVENTS` events; session totals are a few numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pipeline import events as ev
from pipeline.pricing import MEASURES, Usage

TIMELINE_TURNS = 10
MAX_TURN_EVENTS = 400
MAX_STACKS = 20
# A turn's stack when no ProvidersChanged has been seen (a file from before them).
UNKNOWN_STACK = ("Local", "Local", "Local")

# What a timeline draws, by event kind (speculation and tool events by name:
# they are other engineers' and may not exist in every version of the file).
DRAWN = frozenset(
    {
        "StageSpan",
        "VADTrace",
        "TurnDecision",
        "OutputGap",
        "UserTranscript",
        "UserStoppedSpeaking",
        "UserTurnText",
        "BotThinking",
        "BotStartedSpeaking",
        "BotStoppedSpeaking",
        "BotSentenceStarted",
        "BotSpoken",
        "BotWordStarted",
        "BotTurnText",
        "ServiceTTFB",
        "Interrupted",
        "SpeculationStarted",
        "SpeculationEnded",
        "ToolCallStarted",
        "ToolCallFinished",
    }
)

Stack = tuple[str, str, str]

# A barge-in that says only these is a backchannel, not a turn: "uh huh", "mm-hmm", "yeah".
BACKCHANNEL = frozenset(
    [
        "uh",
        "um",
        "uhm",
        "er",
        "ah",
        "oh",
        "mm",
        "mmm",
        "hm",
        "hmm",
        "mhm",
        "huh",
        "uh-huh",
        "mm-hmm",
        "yeah",
        "yep",
        "yes",
        "ok",
        "okay",
        "right",
        "sure",
    ]
)


@dataclass(frozen=True)
class TurnLog:
    """One turn, from the user's speech onset until the next one."""

    number: int
    opened: float
    stack: Stack
    barge_in: bool = False
    words: bool = False
    events: tuple[ev.Event, ...] = ()
    first_token: float | None = None
    last_token: float | None = None
    usage: Usage = field(default_factory=Usage)
    speech_secs: float = 0.0
    gaps: int = 0
    gap_secs: float = 0.0
    # Its verdict has been counted (the next turn began, or the session ended).
    closed: bool = False

    @property
    def false_interruption(self) -> bool:
        """A barge-in that produced no words (a cough) or only a backchannel ("uh huh")."""
        return self.barge_in and not self.words


@dataclass(frozen=True)
class Spend:
    """What one stack was used for, over the whole session."""

    stack: Stack
    usage: Usage = field(default_factory=Usage)
    speech_secs: float = 0.0


@dataclass(frozen=True)
class TurnLogs:
    turns: tuple[TurnLog, ...] = ()
    started: float | None = None
    last: float | None = None
    spend: tuple[Spend, ...] = ()
    barge_ins: int = 0
    # Counted when a barged-in turn ends without words (the open one is not yet).
    false_interruptions: int = 0
    gaps: int = 0
    gap_secs: float = 0.0

    @property
    def current(self) -> TurnLog | None:
        return self.turns[-1] if self.turns else None


def fold(logs: TurnLogs, event: ev.Event, *, speaking: bool, stack: Stack | None, turn: int):
    """Fold one event; ``speaking``: the bot was audible; ``turn``: user turns committed so far.

    Returns ``logs`` itself when the event changes nothing, so the caller can
    skip rebuilding its state.
    """
    kind = event.kind
    if kind == "UserStartedSpeaking":
        opened = TurnLog(turn + 1, event.t, stack or UNKNOWN_STACK, barge_in=speaking)
        logs = _closed(logs)
        return replace(
            logs,
            turns=(*logs.turns, opened)[-TIMELINE_TURNS:],
            barge_ins=logs.barge_ins + speaking,
            started=logs.started if logs.started is not None else event.t,
            last=event.t,
        )
    if kind == "SessionStarted":
        return replace(logs, started=logs.started if logs.started is not None else event.t)
    if kind == "SessionEnded":
        # The conversation's length is its last activity, not when the tab closed.
        return _closed(logs)
    current = logs.current
    if isinstance(event, ev.UsageAmount) and event.measure in MEASURES:
        return _spent(logs, stack, Usage.of(event.measure, event.amount), 0.0)
    if current is None:
        return logs
    if kind == "BotToken":
        first = current.first_token if current.first_token is not None else event.t
        return _with_turn(logs, replace(current, first_token=first, last_token=event.t), event.t)
    if kind not in DRAWN:
        return logs
    turn_log = current
    if len(turn_log.events) < MAX_TURN_EVENTS:
        turn_log = replace(turn_log, events=(*turn_log.events, event))
    if isinstance(event, ev.UserTranscript | ev.UserTurnText) and says_something(event.text):
        turn_log = replace(turn_log, words=True)
    if isinstance(event, ev.OutputGap):
        turn_log = replace(
            turn_log, gaps=turn_log.gaps + 1, gap_secs=turn_log.gap_secs + event.secs
        )
        logs = replace(logs, gaps=logs.gaps + 1, gap_secs=logs.gap_secs + event.secs)
    if isinstance(event, ev.StageSpan) and event.stage == "user":
        speech = max(0.0, event.end - event.start)
        turn_log = replace(turn_log, speech_secs=turn_log.speech_secs + speech)
        logs = _spent(logs, stack, Usage(), speech)
    return _with_turn(logs, turn_log, event.t)


def says_something(text: str) -> bool:
    """Whether ``text`` holds a word beyond backchannels and fillers ("Uh-huh." does not)."""
    words = (w.strip(".,!?;:'\"…").lower() for w in text.split())
    return any(w and w not in BACKCHANNEL for w in words)


def _with_turn(logs: TurnLogs, turn_log: TurnLog, t: float) -> TurnLogs:
    return replace(logs, turns=(*logs.turns[:-1], turn_log), last=t)


def _closed(logs: TurnLogs) -> TurnLogs:
    """Count the open turn's verdict, once, as it ends."""
    current = logs.current
    if current is None or current.closed:
        return logs
    logs = _with_turn(logs, replace(current, closed=True), logs.last or current.opened)
    return replace(logs, false_interruptions=logs.false_interruptions + current.false_interruption)


def _spent(logs: TurnLogs, stack: Stack | None, usage: Usage, speech_secs: float) -> TurnLogs:
    """Add usage to the open turn (if any) and to the session's total for its stack."""
    current = logs.current
    stack = current.stack if current is not None else stack or UNKNOWN_STACK
    spend = list(logs.spend)
    for index, entry in enumerate(spend):
        if entry.stack == stack:
            spend[index] = Spend(stack, entry.usage + usage, entry.speech_secs + speech_secs)
            break
    else:
        spend = [*spend, Spend(stack, usage, speech_secs)][-MAX_STACKS:]
    logs = replace(logs, spend=tuple(spend))
    if current is not None and usage != Usage():
        logs = replace(
            logs, turns=(*logs.turns[:-1], replace(current, usage=current.usage + usage))
        )
    return logs


def false_interruptions(logs: TurnLogs) -> int:
    """Barge-ins that produced no words, the open turn's included once the user has stopped."""
    current = logs.current
    settled = (
        current is not None
        and not current.closed
        and current.false_interruption
        and any(e.kind == "UserStoppedSpeaking" for e in current.events)
    )
    return logs.false_interruptions + settled


def health_cells(logs: TurnLogs) -> list[tuple[str, str]]:
    """The output-health figures for the stats grid: underruns and false interruptions."""
    gaps = f"{logs.gaps}" + (f" ({logs.gap_secs * 1000:.0f} ms)" if logs.gaps else "")
    false = false_interruptions(logs)
    rate = f" ({false / logs.barge_ins:.0%})" if logs.barge_ins else ""
    return [("output gaps", gaps), ("false interruptions", f"{false}{rate}")]
