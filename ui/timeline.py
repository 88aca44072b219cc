"""One turn as a timeline: lanes on a shared time axis, so overlapping work shows as overlap.

From the user's speech onset to the end of the bot's first sentence, one lane
each for the user's speech, the VAD (its speech probability per window), Smart
Turn, STT, LLM, TTS, the bot's paced audio, speculation and tools. Every
recent turn is in the figure; a dropdown in the figure picks one (the newest
shows first), so choosing costs no round trip and a replayed file's figure
works the same. Built once per turn as plain JSON for Gradio (no plotly
Figure: with a few dozen traces its copying cost ~7 ms a redraw, on the event
loop that paces every session's audio).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gradio.components.plot import PlotData

from pipeline import events as ev
from pipeline import pricing
from ui.charts import chart_text
from ui.state import SessionState
from ui.turnlog import TurnLog

# Lanes from top to bottom: (key, label).
LANES = (
    ("user", "You"),
    ("vad", "VAD"),
    ("turn", "Smart Turn"),
    ("stt", "STT"),
    ("llm", "LLM"),
    ("tts", "TTS"),
    ("playback", "Bot audio"),
    ("speculation", "Speculation"),
    ("tools", "Tools"),
)
LANE_Y = {key: len(LANES) - 1 - index for index, (key, _) in enumerate(LANES)}
COLOURS = {
    "user": "#3b82f6",
    "vad": "#94a3b8",
    "turn": "#06b6d4",
    "turn-no": "#f97316",
    "stt": "#2563eb",
    "llm": "#f59e0b",
    "llm-stream": "#fcd34d",
    "tts": "#8b5cf6",
    "tts-stream": "#c4b5fd",
    "playback": "#a855f7",
    "gap": "#dc2626",
    "adopted": "#16a34a",
    "discarded": "#9ca3af",
    "tool": "#0d9488",
    "tool-failed": "#dc2626",
    "ttfb": "#334155",
}
SENTENCE_END = re.compile(r"[.!?…][\"')\]]*$")
BAR_WIDTH = 0.55
THIN_WIDTH = 0.18
# How much before the speech onset the view starts at most (the VAD's first windows).
MAX_LEAD_IN_MS = 300.0
# A stretch pipecat's breakdown shares with a lane of its own: drawn from there.
DUPLICATES = frozenset({"endpointing wait"})


class _Drawing:
    """The bars and marks of one turn, relative to its origin, in milliseconds."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.bars: dict[str, list] = {key: [] for key in ("y", "base", "x", "color", "text")}
        self.thin: dict[str, list] = {key: [] for key in ("y", "base", "x", "color", "text")}
        self.marks: dict[str, list] = {key: [] for key in ("y", "x", "color", "text", "symbol")}
        self.lines: dict[str, list] = {"x": [], "y": []}
        self.times: list[float] = []

    def ms(self, t: float) -> float:
        # A tenth of a millisecond is finer than any screen: shorter JSON per redraw.
        return round((t - self.origin) * 1000, 1)

    def bar(self, lane: str, start: float, end: float, colour: str, text: str, thin=False):
        target = self.thin if thin else self.bars
        target["y"].append(LANE_Y[lane])
        target["base"].append(self.ms(start))
        target["x"].append(max(1.0, round((end - start) * 1000, 1)))
        target["color"].append(COLOURS[colour])
        duration = f"{(end - start) * 1000:.0f} ms"
        target["text"].append(f"{chart_text(text, 120)} ({duration})")
        self.times += [start, end]

    def mark(self, lane: str, t: float, colour: str, text: str, symbol: str = "circle"):
        self.marks["y"].append(LANE_Y[lane])
        self.marks["x"].append(self.ms(t))
        self.marks["color"].append(COLOURS[colour])
        self.marks["text"].append(chart_text(text, 120))
        self.marks["symbol"].append(symbol)
        self.times.append(t)

    def probability(self, start: float, step: float, levels: str) -> None:
        """The VAD lane's line: 0 at the lane's bottom edge, 1 at its top."""
        y0 = LANE_Y["vad"] - 0.4
        for index in range(0, len(levels) - 1, 2):
            try:
                value = int(levels[index : index + 2], 16) / 255
            except ValueError:
                continue
            self.lines["x"].append(self.ms(start + (index // 2 + 0.5) * step))
            self.lines["y"].append(round(y0 + 0.8 * value, 3))
        self.times += [start, start + len(levels) // 2 * step]
        self.lines["x"].append(None)
        self.lines["y"].append(None)


def _origin(turn: TurnLog) -> float:
    """The user's speech onset: the first speech span's start, else the turn's start."""
    starts = [e.start for e in turn.events if isinstance(e, ev.StageSpan) and e.stage == "user"]
    return min(starts) if starts else turn.opened


def _first_sentence_end(turn: TurnLog) -> float | None:
    """When the bot's first sentence finished playing (None: it never started)."""
    started = False
    for event in turn.events:
        ends_sentence = event.kind in ("BotSpoken", "BotStoppedSpeaking", "Interrupted") or (
            isinstance(event, ev.BotWordStarted) and SENTENCE_END.search(event.text)
        )
        if started and ends_sentence:
            return event.t
        started = started or event.kind == "BotStartedSpeaking"
    return None


def _draw(turn: TurnLog) -> _Drawing:
    drawing = _Drawing(_origin(turn))
    speaking_from: float | None = None
    speculating: tuple[float, str] | None = None
    tools: dict[str, tuple[float, str]] = {}
    gaps: list[ev.OutputGap] = []
    for e in turn.events:
        match e:
            case ev.StageSpan() if e.label not in DUPLICATES and e.stage in LANE_Y:
                colour = {"tts": "tts-stream" if e.label == "synthesis" else "tts"}.get(
                    e.stage, e.stage
                )
                drawing.bar(e.stage, e.start, e.end, colour, e.label or e.stage)
            case ev.VADTrace():
                drawing.probability(e.start, e.step, e.levels)
            case ev.TurnDecision():
                verdict = "complete" if e.complete else "not finished"
                text = f"Smart Turn: {verdict}, p={e.probability:.2f}"
                start = e.t - e.ms / 1000
                drawing.bar("turn", start, e.t, "turn" if e.complete else "turn-no", text)
            case ev.UserStoppedSpeaking():
                drawing.mark("turn", e.t, "turn", "turn ended", "diamond")
            case ev.UserTranscript():
                text = f"{'final' if e.final else 'interim'}: {e.text}"
                drawing.mark("stt", e.t, "stt", text, "circle" if e.final else "circle-open")
            case ev.ServiceTTFB() if e.stage in ("stt", "llm", "tts"):
                text = f"{e.stage.upper()} time to first byte ({e.model or e.service})"
                drawing.bar(e.stage, e.t - e.seconds, e.t, "ttfb", text, thin=True)
            case ev.BotThinking():
                drawing.mark("llm", e.t, "llm", "LLM asked", "triangle-right")
            case ev.BotStartedSpeaking():
                speaking_from = e.t
            case ev.BotStoppedSpeaking() | ev.Interrupted() if speaking_from is not None:
                drawing.bar("playback", speaking_from, e.t, "playback", "bot audio")
                speaking_from = None
            case ev.BotSentenceStarted():
                drawing.mark("playback", e.t, "playback", f"plays: {e.text}", "line-ns-open")
            case ev.OutputGap():
                gaps.append(e)
            case ev.SpeculationStarted():
                speculating = (e.t, e.text)
            case ev.SpeculationEnded() if speculating is not None:
                start, text = speculating
                verdict = "adopted" if e.adopted else f"discarded ({e.reason})"
                detail = f"speculation {verdict}: {text}"
                if e.adopted and e.saved_ms:
                    detail += f"; {e.saved_ms:.0f} ms earlier"
                elif e.wasted_tokens or e.wasted_chars:
                    detail += f"; {e.wasted_tokens} tokens, {e.wasted_chars} chars wasted"
                drawing.bar(
                    "speculation", start, e.t, "adopted" if e.adopted else "discarded", detail
                )
                speculating = None
            case ev.ToolCallStarted():
                tools[e.call_id] = (e.t, f"{e.name}({e.arguments})")
            case ev.ToolCallFinished() if e.call_id in tools:
                start, call = tools.pop(e.call_id)
                result = "ok" if e.ok else "failed"
                colour = "tool" if e.ok else "tool-failed"
                drawing.bar("tools", start, e.t, colour, f"{call} {result}: {e.result}")
    end = max(drawing.times, default=turn.opened)
    if turn.first_token is not None and turn.last_token is not None:
        drawing.bar("llm", turn.first_token, turn.last_token, "llm-stream", "LLM streaming")
    # Still open when the turn's record ends: drawn to its last moment.
    if speaking_from is not None:
        drawing.bar("playback", speaking_from, max(end, speaking_from), "playback", "bot audio")
    if speculating is not None:
        drawing.bar("speculation", speculating[0], end, "discarded", "speculation (open)")
    for start, call in tools.values():
        drawing.bar("tools", start, end, "tool", f"{call} (running)")
    # Over the bot's audio, which is drawn once it stops.
    for gap in gaps:
        text = f"underrun: nothing to play for {gap.secs * 1000:.0f} ms"
        drawing.bar("playback", gap.t - gap.secs, gap.t, "gap", text)
    return drawing


def _traces(drawing: _Drawing, visible: bool) -> list[dict]:
    hover = "%{customdata}<extra></extra>"
    traces = []
    for bars, width in ((drawing.bars, BAR_WIDTH), (drawing.thin, THIN_WIDTH)):
        traces.append(
            {
                "type": "bar",
                "orientation": "h",
                "y": bars["y"],
                "x": bars["x"],
                "base": bars["base"],
                "width": width,
                "marker": {"color": bars["color"]},
                "customdata": bars["text"],
                "hovertemplate": hover,
                "showlegend": False,
                "visible": visible,
            }
        )
    traces.append(
        {
            "type": "scatter",
            "mode": "lines",
            "x": drawing.lines["x"],
            "y": drawing.lines["y"],
            "line": {"color": "#0f766e", "width": 1.5},
            "hoverinfo": "skip",
            "showlegend": False,
            "visible": visible,
        }
    )
    traces.append(
        {
            "type": "scatter",
            "mode": "markers",
            "x": drawing.marks["x"],
            "y": drawing.marks["y"],
            "marker": {
                "color": drawing.marks["color"],
                "symbol": drawing.marks["symbol"],
                "size": 9,
                "line": {"width": 1.5, "color": drawing.marks["color"]},
            },
            "customdata": drawing.marks["text"],
            "hovertemplate": hover,
            "showlegend": False,
            "visible": visible,
        }
    )
    return traces


def turn_title(turn: TurnLog, latency: float | None) -> str:
    """What the figure's title says about a turn: its latency, cost and output health."""
    parts = [f"Turn {turn.number}"]
    if latency is not None:
        parts.append(f"{latency * 1000:.0f} ms voice-to-voice")
    stack = dict(zip(("stt", "llm", "tts"), turn.stack, strict=True))
    cost = pricing.cost_of(turn_usage(turn), stack)
    parts.append(pricing.format_usd(cost))
    if turn.gaps:
        parts.append(
            f"{turn.gaps} output gap{'s' * (turn.gaps > 1)} ({turn.gap_secs * 1000:.0f} ms)"
        )
    if turn.false_interruption:
        parts.append("barge-in with no words")
    return " · ".join(parts)


def turn_usage(turn: TurnLog) -> pricing.Usage:
    """The turn's billable usage; STT audio from the user's speech when the STT reported none."""
    usage = turn.usage
    if not usage.stt_audio_secs and turn.speech_secs:
        usage = usage + pricing.Usage(stt_audio_secs=turn.speech_secs)
    return usage


def _range(drawing: _Drawing, turn: TurnLog) -> list[float]:
    end = _first_sentence_end(turn)
    last = max(drawing.times, default=turn.opened)
    stop = drawing.ms(end if end is not None else last)
    stop = max(stop, 500.0)
    # The VAD trace's first windows come just before the onset.
    first = drawing.ms(min(drawing.times, default=drawing.origin))
    return [max(-MAX_LEAD_IN_MS, min(first, 0.0)) - 0.03 * stop, stop * 1.04]


def timeline_figure(state: SessionState) -> PlotData:
    """The timeline as Gradio's plot value (Plotly JSON)."""
    return PlotData(type="plotly", plot=json.dumps(timeline_spec(state)))


def timeline_spec(state: SessionState) -> dict:
    """Each recent turn's lanes as a Plotly figure dict; a dropdown picks the turn, newest first."""
    turns = state.turn_logs.turns
    latency = {entry.turn: entry.seconds for entry in state.latency}
    data: list[dict] = []
    buttons: list[dict[str, Any]] = []
    per_turn = 4
    for index, turn in enumerate(turns):
        drawing = _draw(turn)
        newest = index == len(turns) - 1
        data += _traces(drawing, newest)
        title = chart_text(turn_title(turn, latency.get(turn.number)), 200)
        visible = [i // per_turn == index for i in range(per_turn * len(turns))]
        label = f"Turn {turn.number}" + (" (no words)" if turn.false_interruption else "")
        buttons.append(
            {
                "label": label,
                "method": "update",
                "args": [
                    {"visible": visible},
                    {"title.text": title, "xaxis.range": _range(drawing, turn)},
                ],
            }
        )
    layout: dict[str, Any] = {
        "height": 360,
        "margin": {"l": 90, "r": 10, "t": 60, "b": 40},
        "barmode": "overlay",
        "template": "plotly_white",
        "title": {"text": "Turn timeline: speak to see one", "font": {"size": 14}},
        "xaxis": {"title": {"text": "ms from your speech onset", "standoff": 4}, "zeroline": True},
        "yaxis": {
            "tickvals": [LANE_Y[key] for key, _ in LANES],
            "ticktext": [label for _, label in LANES],
            "range": [-0.6, len(LANES) - 0.4],
            "fixedrange": True,
            "showgrid": True,
        },
        "hovermode": "closest",
    }
    if turns:
        newest_view = buttons[-1]["args"][1]
        layout["title"]["text"] = newest_view["title.text"]
        layout["xaxis"]["range"] = newest_view["xaxis.range"]
        layout["updatemenus"] = [
            {
                "type": "dropdown",
                "buttons": buttons,
                "active": len(buttons) - 1,
                "x": 1.0,
                "xanchor": "right",
                "y": 1.18,
                "yanchor": "top",
                "showactive": True,
            }
        ]
    return {"data": data, "layout": layout}
