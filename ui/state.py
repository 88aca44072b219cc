"""The session state the page shows, folded from pipeline events by a pure reducer.

No gradio, no pipecat, no clock reads: ``reduce(state, event)`` depends only on
its arguments, so it is tested from scripted event lists and a recorded
session replays into exactly the same state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from pipeline import events as ev

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

LATENCY_WINDOW = 200


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str
    interrupted: bool = False


@dataclass(frozen=True)
class SessionState:
    status: Status = "connecting"
    turns: tuple[Turn, ...] = ()
    # Final transcript pieces of the user turn still in progress.
    user_live: str = ""
    error: str | None = None
    latencies: tuple[float, ...] = ()
    interruptions: int = 0


def initial_state() -> SessionState:
    return SessionState()


def reduce(state: SessionState, event: ev.Event) -> SessionState:
    """Fold one event into the state."""
    match event:
        case ev.SessionStarted():
            return replace(state, status="listening", error=None)
        case ev.UserStartedSpeaking():
            # Speaking over the bot is a barge-in: pipecat interrupts it.
            barged_in = state.status == "speaking"
            return replace(state, status="hearing", interruptions=state.interruptions + barged_in)
        case ev.UserTranscript(text=text, final=True):
            return replace(state, user_live=_join(state.user_live, text))
        case ev.UserStoppedSpeaking():
            return replace(state, status="thinking")
        case ev.UserTurnText(text=text):
            turns = (*state.turns, Turn("user", text.strip()))
            return replace(state, turns=turns, user_live="", status="thinking")
        case ev.BotStartedSpeaking():
            return replace(state, status="speaking")
        case ev.BotStoppedSpeaking() if state.status == "speaking":
            return replace(state, status="listening")
        case ev.BotTurnText(text=text, interrupted=interrupted) if text.strip():
            turns = (*state.turns, Turn("bot", text.strip(), interrupted))
            return replace(state, turns=turns)
        case ev.LatencyMeasured(seconds=seconds):
            return replace(state, latencies=((*state.latencies, seconds))[-LATENCY_WINDOW:])
        case ev.ErrorReported(message=message, fatal=fatal):
            return replace(state, error=message, status="error" if fatal else state.status)
        case ev.SessionEnded():
            return replace(state, status="error" if state.status == "error" else "ended")
    return state


def _join(left: str, right: str) -> str:
    return f"{left} {right.strip()}".strip()
