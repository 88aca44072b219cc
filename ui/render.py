"""Session state -> HTML for the conversation, the live user text, the status and the stats.

Pure and cheap: called up to ten times a second per session.
"""

from __future__ import annotations

from html import escape

from ui.heard import heard_stat_cells
from ui.state import (
    TTFB,
    BotReply,
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
    text = STATUS_TEXT[state.status]
    error = ""
    if state.error:
        error = f'<span class="status-error">{escape(state.error)}</span>'
    providers = ""
    if state.providers is not None and state.status not in ("idle", "ended"):
        providers = (
            f'<span class="status-providers">Running on {escape(state.providers.label)}</span>'
        )
    budget = ""
    if state.server_key_remaining is not None and state.status not in ("idle", "ended"):
        left = state.server_key_remaining
        budget = (
            f'<span class="status-budget">{left:.0f} s left on the server\'s API keys</span>'
            if left > 0
            else '<span class="status-budget">Server\'s API keys used up: local models</span>'
        )
    return (
        f'<div class="status-line" data-status="{state.status}">'
        f'<span class="status-dot"></span><span class="status-text">{escape(text)}</span>'
        f"{error}{providers}{budget}</div>"
    )


def _bubble(
    role: str, data_role: str, body: str, extra_class: str = "", providers: str = ""
) -> str:
    who = "You" if role == "user" else "Bot"
    setup = f'<span class="turn-providers">{escape(providers)}</span>' if providers else ""
    return (
        f'<div class="turn turn-{role} {extra_class}" data-role="{data_role}">'
        f'<span class="turn-who">{who}</span><span class="turn-text">{body}</span>{setup}</div>'
    )


def _live_reply(bot: BotReply) -> str:
    parts = []
    if bot.spoken:
        parts.append(f'<span class="spoken">{escape(bot.spoken)}</span>')
    if bot.speaking:
        parts.append(f'<mark class="speaking">{escape(bot.speaking)}</mark>')
    pending = pending_text(bot)
    if pending:
        parts.append(f'<span class="pending">{escape(pending)}</span>')
    return " ".join(parts) or '<span class="pending">…</span>'


def render_conversation(state: SessionState) -> str:
    turns = state.turns[-VISIBLE_TURNS:]
    hidden = max(state.turn_count, len(state.turns)) - len(turns)
    parts = []
    if hidden:
        parts.append(f'<div class="turn-summary">{hidden} earlier turns</div>')
    cards = _tool_cards(state, hidden)
    for number, turn in enumerate(turns, hidden + 1):
        body = escape(turn.text)
        if turn.unspoken:
            body += f' <s class="unspoken" title="never spoken">{escape(turn.unspoken)}</s>'
        if turn.interrupted:
            body += ' <span class="turn-flag">(interrupted)</span>'
        providers = turn.providers.label if turn.providers else ""
        parts.append(_bubble(turn.role, turn.role, body, providers=providers))
        parts.extend(cards.pop(number, ()))
    # Calls made since the last committed turn: the reply they serve is in progress.
    parts.extend(card for _, later in sorted(cards.items()) for card in later)
    if state.bot is not None and state.bot.generated:
        parts.append(_bubble("bot", "bot-live", _live_reply(state.bot), "turn-live"))
    if not parts:
        parts.append('<div class="turn-empty">The conversation will appear here.</div>')
    return '<div class="conversation">' + "".join(parts) + "</div>"


def _tool_cards(state: SessionState, hidden: int) -> dict[int, list[str]]:
    """Each visible tool call as a card, by the number of turns it follows."""
    cards: dict[int, list[str]] = {}
    for call in state.tool_calls:
        if call.after_turns > hidden:
            cards.setdefault(call.after_turns, []).append(render_tool_card(call))
    return cards


def render_tool_card(call: ToolCall) -> str:
    """A small card: the tool, its arguments, how long it took, what it answered."""
    if call.ok is None:
        outcome, took = "running", "running…"
    else:
        outcome, took = ("ok" if call.ok else "failed"), _ms(call.seconds)
    result = f'<div class="tool-result">{escape(call.result)}</div>' if call.result else ""
    return (
        f'<div class="turn turn-tool tool-{outcome}" data-role="tool" '
        f'data-tool="{escape(call.name)}"><span class="turn-who">Tool</span>'
        f'<code class="tool-name">{escape(call.name)}</code> '
        f'<code class="tool-args">{escape(call.arguments)}</code> '
        f'<span class="tool-time">· {took}</span>{result}</div>'
    )


def render_user_live(state: SessionState) -> str:
    """What the user is saying right now: settled words, then the interim guess."""
    if not (state.user_live or state.user_interim):
        return '<div class="user-live empty"></div>'
    interim = f' <span class="interim">{escape(state.user_interim)}</span>'
    return (
        f'<div class="user-live"><span class="turn-who">You (live)</span>'
        f'<span class="final">{escape(state.user_live)}</span>'
        f"{interim if state.user_interim else ''}</div>"
    )


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
    grid = "".join(
        f'<div class="stat"><div class="stat-value">{value}</div>'
        f'<div class="stat-label">{label}</div></div>'
        for label, value in cells
    )
    ttfb = _ttfb_figures(state.ttfb)
    return (
        '<div class="latency-stats"><div class="stats-title">Voice-to-voice latency</div>'
        f'<div class="stat-grid">{grid}</div>'
        f'<div class="stats-ttfb">{escape(ttfb)}</div>'
        f"{_by_setup(state.latency)}</div>"
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


def _by_setup(latency: tuple[TurnLatency, ...]) -> str:
    """Median and p95 per provider combination, once the session has tried more than one."""
    groups: dict[str, list[float]] = {}
    for entry in latency:
        if entry.providers is not None and not entry.interrupted:
            groups.setdefault(entry.providers.label, []).append(entry.seconds)
    if len(groups) < 2:
        return ""
    rows = "".join(
        f"<tr><td>{escape(setup)}</td><td>{len(values)}</td>"
        f"<td>{_ms(percentile(values, 50))}</td><td>{_ms(percentile(values, 95))}</td></tr>"
        for setup, values in groups.items()
    )
    return (
        '<table class="by-setup"><thead><tr><th>STT · LLM · TTS</th><th>turns</th>'
        f"<th>p50</th><th>p95</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_local_health(unavailable: dict[str, str]) -> str:
    """Which local stages this server cannot run, and why (empty when all work)."""
    if not unavailable:
        return ""
    items = "".join(
        f"<li><strong>Local {escape(LOCAL_STAGE_NAMES.get(stage, stage))} unavailable:</strong> "
        f"{escape(reason)}</li>"
        for stage, reason in unavailable.items()
    )
    hint = (
        "Voice activity detection is needed by every session, so no session can start here."
        if "turn" in unavailable
        else "The cloud providers still work: pick one for that stage in "
        "<em>Providers and settings</em> and type its API key."
    )
    return f'<div class="local-health" role="alert"><ul>{items}</ul><p>{hint}</p></div>'


_LLM_SOURCES = {
    "embedded": "embedded, offline",
    "hub": "from the Hugging Face hub",
    "file": "a GGUF file on this server",
}


def render_local_llm(choice) -> str:
    """The model the local LLM runs (a :class:`pipeline.weights.LocalLLM`), and any fallback."""
    source = _LLM_SOURCES.get(choice.source, choice.source)
    line = f'<p class="local-llm">Local LLM: <strong>{escape(choice.label)}</strong> ({source})</p>'
    if choice.notice:
        line += f'<p class="local-llm-notice" role="status">{escape(choice.notice)}</p>'
    return f'<div class="local-llm-info">{line}</div>'


LOCAL_STAGE_NAMES = {
    "turn": "voice activity and turn detection (Silero, Smart Turn)",
    "stt": "speech-to-text (Whisper)",
    "llm": "LLM (SmolLM2 on llama.cpp)",
    "tts": "text-to-speech (Piper)",
}
