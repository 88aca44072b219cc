"""Every view drawn from a hostile session file: its text is shown as text, never as markup.

A replayed file may come from anyone. Here one is written with attack strings
in every string field the replay format accepts (found from the events'
dataclasses, so a new event or field is covered without changing this file),
read back through :func:`ui.export.load_replay` as the page's replay button
does, and drawn by every registered view at each step of the session, with
the A/B comparison, the Scorecard (from a hostile results file) and the
server's notices beside them. Each fragment is parsed: only the tags the
templates write, no event-handler attribute, tags balanced; and each
attack string is still readable on the page. Pure and fast.
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from html import escape
from html.parser import HTMLParser

import pytest

from pipeline import events as ev
from pipeline.weights import LocalLLM
from ui import export, render, scorecard, views
from ui import same_words_panel as ab

PAYLOADS = {
    "script": "<script>alert(1)</script>",
    "attribute": '"><img src=x onerror=alert(1)>',
    "single quote": "' onmouseover='alert(1)",
    "template": "{{7*7}} {% if 1 %}x{% endif %} ${7*7}",
    "entities": "Tom & Jerry &amp; &lt;b&gt; &#60;",
    "closing tags": "</td></tr></table></div><div>",
    "non-BMP": "🎙️ 𝕏 \U0001f600 ünïcödé",
    # As long as a reply token may be twice over (the session sends "<text> <text>").
    "long": "<b>" + "long " * (ev.MAX_TEXT_CHARS // 10 - 2) + "</b>",
}

# Every tag the templates write; anything else on the page came from the data.
OUR_TAGS = {
    "div", "span", "mark", "s", "code", "table", "thead", "tbody", "tr", "th", "td",
    "caption", "strong", "br", "small", "ul", "li", "p", "em", "details", "summary", "h4",
}  # fmt: skip
VOID = {"br"}


class Fragment(HTMLParser):
    """A fragment's tags (checked as they come) and its text as the browser shows it."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.text: list[str] = []
        self.attributes: list[str] = []
        self.feed(html)
        self.close()
        assert not self.open, f"unclosed {self.open} in {html[:300]}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in OUR_TAGS, f"<{tag}> on the page"
        for name, value in attrs:
            assert not name.startswith("on"), f"{name}= on <{tag}>"
            self.attributes.append(value or "")
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def shown(self) -> str:
        return "".join(self.text) + "\n" + "\n".join(self.attributes)


def _hostile(hint: object, text: str) -> object:
    """A value of type ``hint`` with ``text`` in every string it holds."""
    if hint is str:
        return text
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_hostile(args[0], text),)
        return tuple(_hostile(arg, text) for arg in args)
    if args:  # a union: the string in it if it has one, else its first type
        return _hostile(str if str in args else args[0], text)
    return {float: 1.5, int: 3, bool: False}[hint]


def every_event_holding(text: str, t: float) -> list[ev.Event]:
    """One event of every kind, ``text`` in every string field (SessionEnded last)."""
    made = []
    for cls in ev._subclasses(ev.Event):
        hints = typing.get_type_hints(cls)
        made.append(cls(**{f.name: _hostile(hints[f.name], text) for f in fields(cls)}))
    made.sort(key=lambda event: isinstance(event, ev.SessionEnded))
    return [type(e)(**{**e.__dict__, "t": t + i * 0.01}) for i, e in enumerate(made)]


def session(text: str) -> list[ev.Event]:
    """A session where ``text`` reaches every panel: the words, the stack, a tool, the error."""
    return [
        ev.SessionStarted(0.0, text),
        ev.ProvidersChanged(0.0, text, text, text),
        ev.ServerKeyTime(0.1, 100.0, 300.0),
        ev.UserStartedSpeaking(1.0),
        ev.UserTranscript(1.1, text, final=False),
        ev.UserTranscript(1.5, text),
        ev.StageSpan(1.6, "user", 1.0, 1.6, text),
        ev.UserStoppedSpeaking(1.6),
        ev.UserTurnText(1.6, text),
        ev.BotThinking(1.7),
        ev.ServiceTTFB(1.8, "llm", text, text, 0.2),
        ev.ServiceTTFB(1.8, text, text, None, 0.1),
        ev.ToolCallStarted(1.9, text, text, text),
        ev.ToolCallFinished(2.0, text, text, False, text),
        ev.BotToken(2.1, f"{text} {text}"),
        ev.BotStartedSpeaking(2.2),
        ev.LatencyMeasured(2.2, 0.6, ((text, 0.3), ("LLM inference", 0.2))),
        ev.UsageAmount(2.2, "stt_audio_secs", 2.0),
        ev.BotSentenceStarted(2.3, text),
        ev.BotWordStarted(2.4, text),
        ev.BotSpoken(2.6, text),
        ev.BotTurnText(2.7, text),
        ev.BotStoppedSpeaking(2.7),
        ev.HeardLatency(2.8, "reply", 900.0),
        ev.UserStartedSpeaking(3.0),
        ev.UserTranscript(3.1, text, final=False),
        ev.ErrorReported(3.2, text),
        *every_event_holding(text, 4.0),
    ]


def replayed_states(text: str, tmp_path) -> list:
    """The page's state after each event, the last read from the file as the page reads it."""
    path = tmp_path / "hostile-session.json"
    document = {"format": export.FORMAT, "events": [e.to_dict() for e in session(text)]}
    path.write_text(json.dumps(document))
    items = json.loads(path.read_text())["events"]
    steps = [export.replay({**document, "events": items[:n]}) for n in range(1, len(items))]
    return [*steps, export.load_replay(path)]


def hostile_results(text: str) -> dict:
    """A Scorecard results file with ``text`` in every string it holds."""
    return {
        "format": 1,
        "stack": text,
        "real_providers": True,
        "providers": {"stt": text, "llm": text, "tts": text},
        "measured_at": text,
        "machine": {"name": text, "cpus": 2, "loadavg_before": [0.4]},
        "judge": text,
        "scorecard": {
            "scenarios": text,
            "passed": text,
            "not_judged": text,
            "turns_unanswered": text,
            "turns": text,
            "pass_rate": 0.5,
            "v2v": {"median": 0.8, "p95": 1.2},
            "failed_expectations": [{"scenario": text, "expectation": text, "bot_said": text}],
        },
    }


def drawn(text: str, tmp_path) -> dict[str, list[str]]:
    """Every HTML fragment the page can show for a session and results holding ``text``."""
    pages: dict[str, list[str]] = {}
    states = replayed_states(text, tmp_path)
    for current in states:
        for view, value in zip(views.VIEWS, views.render_all(current), strict=True):
            if view.chart:  # a Plotly figure, or the timeline's already serialised one
                plot = value.to_plotly_json() if hasattr(value, "to_plotly_json") else value.plot
                pages.setdefault(view.name, []).append(json.dumps(plot))
            else:
                pages.setdefault(view.name, []).append(value)
    final = states[-1]
    figures = [ab.turn_figures(final, turn) for turn in (1, 2)]
    pages["ab-comparison"] = [
        ab.render_comparison(*figures, seconds=1.0, error=text),
        ab.render_message(text),
    ]
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "hostile.json").write_text(json.dumps(hostile_results(text)))
    pages["scorecard-file"] = [scorecard.render_scorecard(scorecard.load_runs(folder))]
    pages["local-health"] = [render.render_local_health({"stt": text, text: text})]
    pages["local-llm"] = [render.render_local_llm(LocalLLM(text, None, text, text))]
    return pages


# Where each attack string must still be readable, as text.
SHOWN_IN = (
    "status",
    "conversation",
    "user-live",
    "latency-stats",
    "cost",
    "ab-comparison",
    "scorecard-file",
    "local-health",
    "local-llm",
)


def is_chart(name: str) -> bool:
    return any(view.chart for view in views.VIEWS if view.name == name)


@pytest.mark.parametrize("text", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_every_view_shows_a_hostile_files_text_as_text(text, tmp_path):
    pages = drawn(text, tmp_path)
    # Escaped twice, the page would show entities: "&lt;script&gt;" where the file said "<script>".
    twice = {escape(text), escape(text, quote=False)}
    twice |= {form.replace("&quot;", "&#34;").replace("&#x27;", "&#39;") for form in twice}
    twice.discard(text)
    for name, fragments in pages.items():
        for html in fragments:
            assert "<script" not in html.lower() and "<img" not in html.lower(), name
        if is_chart(name):  # Plotly's labels: ui.charts.chart_text, tested in test_replay
            continue
        for html in fragments:
            if any(c in text for c in "<>&\"'"):
                assert text not in html, f"#{name} holds the text unescaped"
        # Only our tags, no handler attributes, every tag closed.
        shown = "\n".join(Fragment(html).shown for html in fragments)
        assert not any(form in shown for form in twice), f"#{name} escapes the text twice"
        if name in SHOWN_IN:
            expected = text.upper() if name == "latency-stats" else text  # "STT TTFB p50 …"
            assert expected in shown, f"#{name} does not show the file's text"
