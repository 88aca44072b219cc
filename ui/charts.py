"""The latency dashboard's Plotly figures, drawn from the session state.

Only the last ``CHART_TURNS`` turns are drawn, so a long session sends the
browser the same amount of data per update as a short one. Figures are built
from plain dicts without plotly's validation (0.4 ms instead of ~13 ms a
figure): rendering runs on the event loop that paces every session's audio.

Every string drawn comes from events, and a replayed file's events from anyone,
so each passes through :func:`chart_text` first.
"""

from __future__ import annotations

from html import escape

# plotly imports pandas lazily when it first serialises a figure; two Gradio
# worker threads doing that at once can meet a half-imported module
# ("partially initialized module 'pandas'"), so import it up front.
import pandas  # noqa: F401
import plotly.graph_objects as go

from ui.state import CHART_TURNS, SessionState

# The order a turn's time is spent in, and a colour for each part (pipecat's labels).
CONTRIBUTION_COLOURS = {
    "endpointing wait": "#94a3b8",
    "transcription": "#3b82f6",
    "turn detection": "#06b6d4",
    "LLM inference": "#f59e0b",
    "LLM tool call": "#fb923c",
    # The turn's tool calls (TurnLatency.tool_seconds), in place of pipecat's "function handler".
    "tool": "#10b981",
    "sentence aggregation": "#eab308",
    "speech synthesis": "#8b5cf6",
    "output transport": "#ec4899",
    "pipeline": "#64748b",
}
STAGE_COLOURS = {"stt": "#3b82f6", "llm": "#f59e0b", "tts": "#8b5cf6"}
SERVICES_NAMED = 3  # services named in a TTFB legend entry, the rest counted


def chart_text(text: str, limit: int = 60) -> str:
    """``text`` made safe for a Plotly label, legend entry or hover text.

    Plotly draws a subset of HTML there, links included, so ``<``, ``>`` and
    ``&`` become entities (which Plotly shows as the characters); and it fills
    ``%{...}`` placeholders in a hover template, which has no escape of its own,
    so the brace of ``%{`` becomes an entity too. Long text is cut.
    """
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return escape(text, quote=False).replace("%{", "%&#123;")


def _layout(title: str, y_title: str) -> dict:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": 300,
        "margin": {"l": 50, "r": 10, "t": 40, "b": 30},
        "xaxis": {"title": {"text": "turn", "standoff": 4}, "dtick": 1},
        "yaxis": {"title": {"text": y_title}, "rangemode": "tozero"},
        "legend": {"orientation": "h", "y": -0.32, "font": {"size": 10}},
        "template": "plotly_white",
    }


def _figure(data: list[dict], layout: dict) -> go.Figure:
    return go.Figure({"data": data, "layout": layout}, _validate=False)


# Tick marks for a turn's speculation: its early reply kept, or only dropped ones.
SPECULATION_MARKS = {"adopted": " ⚡", "discarded": " ↺"}


def breakdown_figure(state: SessionState) -> go.Figure:
    """One stacked bar per turn: where each millisecond of voice-to-voice went."""
    turns = state.latency[-CHART_TURNS:]
    labels = dict.fromkeys(CONTRIBUTION_COLOURS)
    for turn in turns:
        labels.update(dict.fromkeys(label for label, _ in turn.contributions))
    # Each tick names the providers the turn ran on, so a switch shows on the axis.
    x = [
        f"{t.turn}{' ✂' if t.interrupted else ''}{SPECULATION_MARKS.get(t.speculation, '')}"
        + (f"<br><sub>{chart_text(t.providers.short)}</sub>" if t.providers else "")
        for t in turns
    ]
    setups = [chart_text(t.providers.label, 160) if t.providers else "" for t in turns]
    per_turn = []
    for turn in turns:
        seconds: dict[str, float] = {}
        for name, s in turn.contributions:
            seconds[name] = seconds.get(name, 0.0) + s
        # The tool's whole time, also what ran on while the waiting phrase played.
        seconds.pop("function handler", None)
        if turn.tool_seconds:
            seconds["tool"] = turn.tool_seconds
        per_turn.append(seconds)
    bars = []
    for label in labels:
        y = [seconds.get(label, 0.0) * 1000 for seconds in per_turn]
        if any(y):
            name = chart_text(label)
            bars.append(
                {
                    "type": "bar",
                    "name": name,
                    "x": x,
                    "y": y,
                    "marker": {"color": CONTRIBUTION_COLOURS.get(label, "#a3a3a3")},
                    "customdata": setups,
                    "hovertemplate": f"{name}: %{{y:.0f}} ms<br>%{{customdata}}<extra></extra>",
                }
            )
    layout = _layout("Voice-to-voice latency per turn", "ms")
    layout["barmode"] = "stack"
    layout["xaxis"]["type"] = "category"
    layout["margin"]["b"] = 45
    return _figure(bars, layout)


def ttfb_figure(state: SessionState) -> go.Figure:
    """Time to first byte per service, one line per stage, labelled with the model."""
    first_turn = max(0, state.user_turns - CHART_TURNS)
    lines = []
    for stage in ("stt", "llm", "tts"):
        points = [p for p in state.ttfb if p.stage == stage and p.turn > first_turn]
        if not points:
            continue
        services = [chart_text(service) for service in sorted({p.service for p in points})]
        if len(services) > SERVICES_NAMED:
            services[SERVICES_NAMED:] = [f"+{len(services) - SERVICES_NAMED} more"]
        lines.append(
            {
                "type": "scatter",
                "name": f"{stage.upper()}: {', '.join(services)}",
                "x": [p.turn for p in points],
                "y": [p.seconds * 1000 for p in points],
                "mode": "lines+markers",
                "line": {"color": STAGE_COLOURS[stage]},
                "marker": {
                    "symbol": ["circle-open" if p.interrupted else "circle" for p in points],
                    "size": 8,
                },
                "text": [
                    "interrupted: not in the figures" if p.interrupted else chart_text(p.service)
                    for p in points
                ],
            }
        )
    return _figure(lines, _layout("Time to first byte per service", "ms"))
