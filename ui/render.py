"""Session state -> HTML for the conversation, the live user text, the status and the stats.

Pure and cheap: called up to ten times a second per session.
"""

from __future__ import annotations

from dataclasses import dataclass

from ui import markup
from ui.heard import heard_stat_cells
from ui.state import (
    TTFB,
    SessionState,
    ToolCall,
    TurnLatency,
    pending_text,
    percentile,
)
from ui.turnlog import health_cells

# The page keeps the most recent turns; older ones are summarised in one line
# so a long session does not grow what is sent to the browser on every update.
VISIBLE_TURNS = 40

STATUS_TEXT = {
    "idle": "Click the microphone box, press Record and allow the microphone to start.",
    "connecting": "Connecting…",
    "listening": "Listening: say something.",
    "hearing": "Hearing you…",
    "thinking": "Thinking…",
    "speaking": "Speaking (talk over me to interrupt).",
    "error": "Error",
    "ended": "Session ended. Press Record to start again.",
}


def render_status(state: SessionState) -> str:
    running = state.status not in ("idle", "ended")
    return markup.render(
        "status.html",
        status=state.status,
        text=STATUS_TEXT[state.status],
        error=state.error,
        providers=state.providers.label if state.providers is not None and running else "",
        budget_left=state.server_key_remaining if running else None,
    )


def render_conversation(state: SessionState) -> str:
    turns = state.turns[-VISIBLE_TURNS:]
    hidden = max(state.turn_count, len(state.turns)) - len(turns)
    cards = _tool_cards(state, hidden)
    entries: list[tuple[str, object]] = []
    for number, turn in enumerate(turns, hidden + 1):
        entries.append(("turn", turn))
        entries.extend(("tool", card) for card in cards.pop(number, ()))
    # Calls made since the last committed turn: the reply they serve is in progress.
    entries.extend(("tool", card) for _, later in sorted(cards.items()) for card in later)
    live = None
    if state.bot is not None and state.bot.generated:
        live = (state.bot, pending_text(state.bot))
    return markup.render("conversation.html", hidden=hidden, entries=entries, live=live)


@dataclass(frozen=True)
class ToolCard:
    """A tool call as its card shows it."""

    outcome: str  # "running", "ok" or "failed"
    took: str
    name: str
    arguments: str
    result: str


def _tool_card(call: ToolCall) -> ToolCard:
    if call.ok is None:
        outcome, took = "running", "running…"
    else:
        outcome, took = ("ok" if call.ok else "failed"), _ms(call.seconds)
    return ToolCard(outcome, took, call.name, call.arguments, call.result)


def _tool_cards(state: SessionState, hidden: int) -> dict[int, list[ToolCard]]:
    """Each visible tool call as a card, by the number of turns it follows."""
    cards: dict[int, list[ToolCard]] = {}
    for call in state.tool_calls:
        if call.after_turns > hidden:
            cards.setdefault(call.after_turns, []).append(_tool_card(call))
    return cards


def render_tool_card(call: ToolCall) -> str:
    """A small card: the tool, its arguments, how long it took, what it answered."""
    return markup.render("tool_card.html", card=_tool_card(call))


def render_user_live(state: SessionState) -> str:
    """What the user is saying right now: settled words, then the interim guess."""
    return markup.render("user_live.html", final=state.user_live, interim=state.user_interim)


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms"


def _ttfb_figures(points: tuple[TTFB, ...]) -> str:
    stages: dict[str, list[float]] = {}
    for point in points:
        if not point.interrupted:
            stages.setdefault(point.stage, []).append(point.seconds)
    return " · ".join(
        f"{stage.upper()} TTFB p50 {_ms(percentile(values, 50))}"
        for stage, values in sorted(stages.items())
    )


def render_stats(state: SessionState) -> str:
    values = [entry.seconds for entry in state.latency]
    last = values[-1] if values else None
    cells = [
        ("last", _ms(last)),
        ("p50", _ms(percentile(values, 50))),
        ("p95", _ms(percentile(values, 95))),
        ("turns", str(state.user_turns)),
        ("interruptions", str(state.interruptions)),
        ("LLM tokens", str(state.usage.llm_tokens)),
        ("TTS characters", str(state.usage.tts_characters)),
    ]
    cells += heard_stat_cells(state)
    cells += health_cells(state.turn_logs)
    cells += _speculation_cells(state)
    return markup.render(
        "stats.html",
        cells=cells,
        ttfb=_ttfb_figures(state.ttfb),
        by_setup=_by_setup(state.latency),
    )


def _speculation_cells(state: SessionState) -> list[tuple[str, str]]:
    """Speculative turns: how often the early reply was kept, what the dropped ones cost."""
    counts = state.speculation
    if not counts.started:
        return []
    saved = [o.saved_ms / 1000 for o in state.speculations if o.adopted]
    return [
        ("speculated", str(counts.started)),
        ("adopted · discarded", f"{counts.adopted} · {counts.discarded}"),
        ("tokens wasted", str(counts.wasted_tokens)),
        ("head start p50", _ms(percentile(saved, 50))),
    ]


def _by_setup(latency: tuple[TurnLatency, ...]) -> list[tuple[str, str, str, str]]:
    """Turns, median and p95 per provider combination, once the session has tried more than one."""
    groups: dict[str, list[float]] = {}
    for entry in latency:
        if entry.providers is not None and not entry.interrupted:
            groups.setdefault(entry.providers.label, []).append(entry.seconds)
    if len(groups) < 2:
        return []
    return [
        (setup, str(len(values)), _ms(percentile(values, 50)), _ms(percentile(values, 95)))
        for setup, values in groups.items()
    ]


def render_local_health(unavailable: dict[str, str]) -> str:
    """Which local stages this server cannot run, and why (empty when all work)."""
    if not unavailable:
        return ""
    return markup.render(
        "local_health.html",
        unavailable=[(LOCAL_STAGE_NAMES.get(s, s), reason) for s, reason in unavailable.items()],
        no_session="turn" in unavailable,
    )


_LLM_SOURCES = {
    "embedded": "embedded, offline",
    "hub": "from the Hugging Face hub",
    "file": "a GGUF file on this server",
}


def render_local_llm(choice) -> str:
    """The model the local LLM runs (a :class:`pipeline.weights.LocalLLM`), and any fallback."""
    return markup.render(
        "local_llm.html",
        label=choice.label,
        source=_LLM_SOURCES.get(choice.source, choice.source),
        notice=choice.notice,
    )


LOCAL_STAGE_NAMES = {
    "turn": "voice activity and turn detection (Silero, Smart Turn)",
    "stt": "speech-to-text (Whisper)",
    "llm": "LLM (SmolLM2 on llama.cpp)",
    "tts": "text-to-speech (Piper)",
}
