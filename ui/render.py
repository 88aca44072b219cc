"""Session state -> component values (HTML strings), pure and cheap."""

from __future__ import annotations

from html import escape

from ui.state import SessionState

# The page keeps the most recent turns; older ones are summarised in one line
# so a long session does not grow what is sent to the browser on every update.
VISIBLE_TURNS = 40

STATUS_TEXT = {
    "idle": "Press Record and allow the microphone to start talking.",
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
    return (
        f'<div class="status-line" data-status="{state.status}">'
        f'<span class="status-dot"></span><span class="status-text">{escape(text)}</span>'
        f"{error}</div>"
    )


def render_conversation(state: SessionState) -> str:
    turns = state.turns[-VISIBLE_TURNS:]
    hidden = len(state.turns) - len(turns)
    parts = []
    if hidden:
        parts.append(f'<div class="turn-summary">{hidden} earlier turns</div>')
    for turn in turns:
        mark = ' <span class="turn-flag">(interrupted)</span>' if turn.interrupted else ""
        who = "You" if turn.role == "user" else "Bot"
        parts.append(
            f'<div class="turn turn-{turn.role}" data-role="{turn.role}">'
            f'<span class="turn-who">{who}</span>'
            f'<span class="turn-text">{escape(turn.text)}</span>{mark}</div>'
        )
    if state.user_live:
        parts.append(
            f'<div class="turn turn-user turn-live" data-role="user-live">'
            f'<span class="turn-who">You</span>'
            f'<span class="turn-text">{escape(state.user_live)}</span></div>'
        )
    if not parts:
        parts.append('<div class="turn-empty">The conversation will appear here.</div>')
    return '<div class="conversation">' + "".join(parts) + "</div>"


def render(state: SessionState) -> tuple[str, str]:
    """The values of (conversation, status), in the order the layout wires them."""
    return render_conversation(state), render_status(state)
