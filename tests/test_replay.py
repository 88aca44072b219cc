"""Replaying a session file anyone may upload: bounded, validated, linear, and safe to show.

Pure: files in a temporary folder, the reducer, the renderers and the charts.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import typing
from dataclasses import dataclass, fields
from functools import reduce as fold
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline import events as ev
from tests.test_state import one_turn
from ui import charts, export, render, state

HOSTILE = '<a href="https://evil.example">click</a><img src=x onerror=alert(1)> %{customdata}'


def write(tmp_path, document, name="session.json"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def session_file(events):
    return {"format": export.FORMAT, "events": [e.to_dict() for e in events]}


def refusal(tmp_path, document) -> str:
    with pytest.raises(export.ReplayError) as caught:
        export.load_replay(write(tmp_path, document))
    return str(caught.value)


def test_a_visitors_export_replays_from_its_file(tmp_path):
    events = [ev.SessionStarted(0), *one_turn(), *one_turn(t0=5, bot="Second answer.")]
    path = export.write_export(events, tmp_path)
    assert export.load_replay(path) == fold(state.reduce, events, state.initial_state())


# --------------------------------------------------------------------------- size and count


def test_an_oversized_file_is_refused_by_its_size_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.json"
    # Not even JSON: parsing it would give a different message.
    path.write_bytes(b"x" * 12_300_000)
    with pytest.raises(export.ReplayError) as caught:
        export.load_replay(path)
    assert str(caught.value) == "That file is 12.3 MB; a session file is at most 2 MB."
    path.write_bytes(b"x" * (export.MAX_REPLAY_BYTES + 1))
    with pytest.raises(export.ReplayError, match=r"That file is 2\.1 MB; "):
        export.load_replay(path)
    path.write_bytes(b"x" * export.MAX_REPLAY_BYTES)
    with pytest.raises(export.ReplayError, match="not valid JSON"):
        export.load_replay(path)


def test_the_largest_export_fits_well_within_the_size_limit(tmp_path):
    events = [ev.SessionStarted(0)]
    while len(events) < export.MAX_REPLAY_EVENTS:
        events += one_turn(t0=len(events), user="What is the weather like", bot="Mild and dry.")
    path = export.write_export(events[: export.MAX_REPLAY_EVENTS], tmp_path)
    assert path.stat().st_size < export.MAX_REPLAY_BYTES / 2
    assert export.load_replay(path).user_turns > 200


def test_more_events_than_an_export_can_hold_are_refused(tmp_path):
    from pipeline.session import EVENT_LOG_LIMIT

    assert export.MAX_REPLAY_EVENTS == EVENT_LOG_LIMIT
    turns = [ev.UserTurnText(i, "a") for i in range(40_000)]
    compact = json.dumps(session_file(turns), separators=(",", ":"))
    assert len(compact) < export.MAX_REPLAY_BYTES  # refused for its count, not its size
    message = refusal(tmp_path, compact)
    assert message == "That file holds 40,000 events; a session file holds at most 5,000."
    assert export.load_replay(write(tmp_path, session_file(turns[:5000]))).turn_count == 5000


# --------------------------------------------------------------------------- linear folding


def _state_size(current: state.SessionState) -> int:
    """Everything the reducer copies when it rebuilds a field: a bound on one event's work."""
    bot = current.bot or state.BotReply()
    return (
        len(current.turns)
        + len(current.latency)
        + len(current.ttfb)
        + len(current.user_live)
        + len(current.user_interim)
        + len(bot.generated)
        + len(bot.spoken)
        + len(bot.speaking)
    )


def _hostile_stream(n: int):
    """n events that grow every field the reducer appends to: runs of 100 of each kind."""
    word = "blah " * 400
    kinds = [
        lambda i: ev.UserTurnText(i, f"turn {i}"),
        lambda i: ev.UserTranscript(i, word),
        lambda i: ev.BotToken(i, word),
        lambda i: ev.BotWordStarted(i, word),
        lambda i: ev.BotSpoken(i, word),
        lambda i: ev.BotTurnText(i, f"reply {i}"),
        lambda i: ev.LatencyMeasured(i, 0.5, (("LLM inference", 0.2),) * ev.MAX_ITEMS),
        lambda i: ev.ServiceTTFB(i, "llm", "svc", None, 0.1),
    ]
    yield ev.BotThinking(0)
    for i in range(n):
        yield kinds[i // 100 % len(kinds)](i)


def _largest_state_while_folding(n: int) -> int:
    current, largest = state.initial_state(), 0
    for event in _hostile_stream(n):
        current = state.reduce(current, event)
        largest = max(largest, _state_size(current))
    return largest


def test_folding_costs_a_bounded_amount_per_event_however_long_the_session():
    # What one event costs is bounded by the size of what the reducer rebuilds:
    # if that stops growing, folding n events costs O(n).
    assert _largest_state_while_folding(20_000) == _largest_state_while_folding(40_000)


def test_the_page_still_counts_every_turn_and_the_export_keeps_them_all(tmp_path):
    events = [ev.SessionStarted(0)]
    for i in range(300):
        events += one_turn(t0=i * 5, user=f"question {i}", bot=f"answer {i}")
    final = fold(state.reduce, events, state.initial_state())
    assert final.turn_count == 600 and len(final.turns) == state.KEPT_TURNS
    assert f"{600 - render.VISIBLE_TURNS} earlier turns" in render.render_conversation(final)
    transcript = export.export_session(events)["transcript"]
    assert len(transcript) == 600
    assert transcript[0]["text"] == "question 0" and transcript[-1]["text"] == "answer 299"


# --------------------------------------------------------------------------- validation


def _sample(hint):
    """A value of the type ``hint`` (the JSON form :meth:`Event.to_dict` would write)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        items = args[:1] * 2 if args[-1] is Ellipsis else args
        return tuple(_sample(item) for item in items)
    if args:  # an optional: the non-None choice
        return _sample(next(arg for arg in args if arg is not type(None)))
    return {str: "text", float: 1.5, int: 3, bool: True}[hint]


def every_event() -> list[ev.Event]:
    return [
        cls(**{f.name: _sample(typing.get_type_hints(cls)[f.name]) for f in fields(cls)})
        for cls in ev._subclasses(ev.Event)
    ]


def test_every_kind_of_event_survives_export_and_replay():
    events = every_event()
    assert len(events) >= 20
    for event in events:
        assert ev.from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_a_new_event_type_replays_with_no_change_to_from_dict():
    @dataclass(frozen=True)
    class ProbeReplayEvent(ev.Event):
        label: str
        ratio: float
        count: int
        on: bool
        maybe: str | None
        pairs: tuple[tuple[str, float], ...]
        optional: typing.Optional[int] = None  # noqa: UP045 (the typing spelling too)

    event = ProbeReplayEvent(1.0, "x", 0.5, 2, False, None, (("a", 1.0),), 7)
    assert ev.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    bad = {**event.to_dict(), "pairs": [["a", "1"]]}
    with pytest.raises(ev.EventFormatError, match=r"ProbeReplayEvent\.pairs\[0\]\[1\]"):
        ev.from_dict(bad)


def test_numbers_are_converted_and_lists_become_tuples():
    event = ev.from_dict(
        {"kind": "LatencyMeasured", "t": 3, "seconds": 1, "contributions": [["LLM", 0]]}
    )
    assert event == ev.LatencyMeasured(3.0, 1.0, (("LLM", 0.0),))
    assert type(event.t) is float and type(event.contributions[0][1]) is float
    defaulted = ev.from_dict({"kind": "UserTranscript", "t": 1, "text": "hi"})
    assert defaulted.final is True


TTFB = {"kind": "ServiceTTFB", "t": 1.0, "stage": "llm", "service": "s", "model": None}
BAD_EVENTS = {
    "a number as text": ({**TTFB, "seconds": "9" * 20_000}, "ServiceTTFB.seconds must be a number"),
    "true as a number": ({**TTFB, "seconds": True}, "ServiceTTFB.seconds must be a number"),
    "NaN": ({**TTFB, "seconds": float("nan")}, "finite"),
    "infinity": ({**TTFB, "seconds": float("inf")}, "finite"),
    "a huge number": ({**TTFB, "seconds": 10**300}, "finite"),
    "a number as a model": ({**TTFB, "seconds": 1, "model": 5}, "ServiceTTFB.model must be"),
    "a dict as text": ({"kind": "BotToken", "t": 1, "text": {"a": 1}}, "BotToken.text must be"),
    "a long text": ({"kind": "BotToken", "t": 1, "text": "x" * 10_001}, "longer than 10,000"),
    "a lone surrogate": ({"kind": "BotToken", "t": 1, "text": "\ud800"}, "not valid Unicode"),
    "a number as a flag": ({"kind": "BotTurnText", "t": 1, "text": "", "interrupted": 1}, "true"),
    "a fraction as a count": (
        {"kind": "UsageReported", "t": 1, "stage": "llm", "amount": 1.5},
        "whole",
    ),
    "not pairs": (
        {"kind": "LatencyMeasured", "t": 1, "seconds": 1, "contributions": [["a", 1, 2]]},
        "must hold 2 items",
    ),
    "too many pairs": (
        {"kind": "LatencyMeasured", "t": 1, "seconds": 1, "contributions": [["a", 1]] * 17},
        "more than 16 items",
    ),
    "a string as pairs": (
        {"kind": "LatencyMeasured", "t": 1, "seconds": 1, "contributions": "ab"},
        "must be a list",
    ),
    "a missing field": ({"kind": "BotToken", "t": 1}, "lacks its 'text' field"),
    "an extra field": ({"kind": "BotToken", "t": 1, "text": "", HOSTILE: 1}, "does not define"),
    "an unknown kind": ({"kind": "Exec", "t": 1}, "unknown event kind"),
    "HTML as the kind": ({"kind": HOSTILE, "t": 1}, "unknown event kind"),
    "a list as the kind": ({"kind": ["BotToken"], "t": 1}, "unknown event kind"),
    "the base class": ({"kind": "Event", "t": 1}, "unknown event kind"),
    "no kind": ({"t": 1}, "unknown event kind"),
    "not an object": (["BotToken", 1], "must be a JSON object"),
}


@pytest.mark.parametrize("name", BAD_EVENTS)
def test_a_malformed_event_is_refused_with_a_plain_message(tmp_path, name):
    item, expected = BAD_EVENTS[name]
    with pytest.raises(ev.EventFormatError, match=re.escape(expected)):
        ev.from_dict(item)
    message = refusal(
        tmp_path, {"format": export.FORMAT, "events": [{"kind": "SessionStarted", "t": 0}, item]}
    )
    assert message.startswith("Event 2 of that file is not valid: ") and expected in message
    _assert_safe(message)


# The file's own text (and a number of its own), placed where each kind of mismatch
# occurs: the refusal names our kind, field and limit, and quotes none of it.
MARK, BIG = "file-text-7b1e", 12_345_678_901_234_567
PAIRS = {"kind": "LatencyMeasured", "t": 1, "seconds": 1}
QUOTING = {
    "a list as text": (
        {"kind": "BotToken", "t": 1, "text": [MARK]},
        "BotToken.text must be a string",
    ),
    "too long a text": (
        {"kind": "BotToken", "t": 1, "text": MARK * 1000},
        "BotToken.text is longer than 10,000 characters",
    ),
    "a lone surrogate": (
        {"kind": "BotToken", "t": 1, "text": MARK + "\ud800"},
        "BotToken.text is not valid Unicode text",
    ),
    "text as a time": ({"kind": "BotThinking", "t": MARK}, "BotThinking.t must be a number"),
    "text as a count": (
        {"kind": "UsageReported", "t": 1, "stage": "llm", "amount": MARK},
        "UsageReported.amount must be a whole number",
    ),
    "too large a count": (
        {"kind": "UsageReported", "t": 1, "stage": "llm", "amount": BIG},
        "UsageReported.amount must be a finite number within ±1e+12",
    ),
    "too large a time": (
        {"kind": "BotThinking", "t": -float(BIG)},
        "BotThinking.t must be a finite number within ±1e+12",
    ),
    "text as a flag": (
        {"kind": "BotTurnText", "t": 1, "text": "", "interrupted": MARK},
        "BotTurnText.interrupted must be true or false",
    ),
    "text as pairs": (
        {**PAIRS, "contributions": MARK},
        "LatencyMeasured.contributions must be a list",
    ),
    "too many pairs": (
        {**PAIRS, "contributions": [[MARK, 1]] * 17},
        "LatencyMeasured.contributions holds more than 16 items",
    ),
    "a pair too long": (
        {**PAIRS, "contributions": [[MARK, BIG, MARK]]},
        "LatencyMeasured.contributions[0] must hold 2 items",
    ),
    "a pair too short": (
        {**PAIRS, "contributions": [[MARK]]},
        "LatencyMeasured.contributions[0][1] is missing",
    ),
    "a number as a label": (
        {**PAIRS, "contributions": [["a", 1], [BIG, MARK]]},
        "LatencyMeasured.contributions[1][0] must be a string",
    ),
    "a field named by the file": (
        {"kind": "BotToken", "t": 1, "text": MARK, MARK: MARK},
        "BotToken has a field it does not define",
    ),
    "that field before a missing one": (
        {"kind": "BotToken", "t": MARK, MARK: 1},
        "BotToken has a field it does not define",
    ),
    "a missing field before a wrong one": (
        {"kind": "ServiceTTFB", "t": MARK, "stage": "llm", "service": "s", "seconds": 1},
        "ServiceTTFB lacks its 'model' field",
    ),
    "the file's text as the kind": ({"kind": MARK, "t": 1}, "unknown event kind"),
    "a list as the event": ([MARK, BIG], "an event must be a JSON object"),
}


@pytest.mark.parametrize("name", QUOTING)
def test_a_refusal_names_the_place_and_never_quotes_the_file(name):
    item, expected = QUOTING[name]
    with pytest.raises(ev.EventFormatError) as caught:
        ev.from_dict(item)
    assert str(caught.value) == expected
    assert MARK not in str(caught.value) and str(BIG) not in str(caught.value)


def test_a_huge_list_or_many_fields_cost_one_error_not_one_each(monkeypatch):
    """pydantic reports every error it finds: a 2 MB file would make it list a million.

    (Before FailFast, a list of a million bad items took 3 s and 1 GB to refuse.)
    """
    validator = ev._validator(ev.LatencyMeasured)
    with pytest.raises(ValidationError) as caught:
        validator.validate_python({"t": 1, "seconds": 1, "contributions": [1] * 100_000})
    assert caught.value.error_count() == 1

    def never(cls):
        raise AssertionError("the extra keys went to pydantic")

    monkeypatch.setattr(ev, "_validator", never)
    many = {"kind": "BotToken", "t": 1, "text": "", **{f"k{i}": 0 for i in range(100_000)}}
    with pytest.raises(ev.EventFormatError, match="BotToken has a field it does not define"):
        ev.from_dict(many)


def _assert_safe(message: str) -> None:
    """Plain words: no markup, nothing quoted from the file, no traceback, short."""
    assert "<" not in message and ">" not in message and "%{" not in message
    assert "evil" not in message and "Traceback" not in message and len(message) < 200


def _deeply_nested(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_FILES = {
    "empty": ("", "not valid JSON"),
    "not JSON": ("{'format': 1", "not valid JSON"),
    "not UTF-8": (b"\xff\xfe\xfa{", "not valid JSON"),
    "an integer too long to read": ("1" * 5000, "not valid JSON"),
    "nested too deeply": (_deeply_nested(200_000), "nested too deeply"),
    "a list": ([1, 2], "not a Voice Lab session file"),
    "no format": ({"events": []}, "not a Voice Lab session file"),
    "HTML as the format": ({"format": HOSTILE, "events": []}, "not a Voice Lab session file"),
    "events not a list": ({"format": export.FORMAT, "events": {"a": 1}}, "no list of events"),
    "no events": ({"format": export.FORMAT}, "no list of events"),
    "an event nested deeply": (
        f'{{"format": "{export.FORMAT}", "events": '
        f'[{{"kind": "BotToken", "t": 1, "text": {_deeply_nested(500)}}}]}}',
        "BotToken.text must be a string",
    ),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_a_bad_file_is_refused_with_a_plain_message(tmp_path, name):
    document, expected = BAD_FILES[name]
    path = tmp_path / "bad.json"
    if isinstance(document, bytes):
        path.write_bytes(document)
    else:
        write(tmp_path, document, "bad.json")
    with pytest.raises(export.ReplayError) as caught:
        export.load_replay(path)
    assert expected in str(caught.value)
    _assert_safe(str(caught.value))


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(export.ReplayError, match="could not be read"):
        export.load_replay(tmp_path / "gone.json")
    with pytest.raises(export.ReplayError, match="could not be read"):
        export.load_replay(tmp_path)  # a folder
    with pytest.raises(export.ReplayError, match="No file arrived"):
        export.load_replay(None)


def test_random_damage_to_a_real_export_never_escapes_as_another_error(tmp_path):
    """Whatever a file holds, replay either works and renders, or says why in plain words."""
    events = [ev.SessionStarted(0), ev.ProvidersChanged(0, "a b", "c d", "e f")]
    events += [*one_turn(), *one_turn(t0=5), *every_event()]
    good = session_file(events)
    junk = [None, True, -1, 1e308, "", HOSTILE, [], [[]], {}, {"kind": "BotToken"}, "x" * 10]
    rng = random.Random(7)
    replayed = refused = 0
    for _ in range(600):
        document = json.loads(json.dumps(good))
        for _ in range(rng.randint(1, 3)):
            item = rng.choice(document["events"])
            key = rng.choice(sorted(item))
            item[key] = rng.choice(junk)
        try:
            current = export.replay(document)
        except export.ReplayError as e:
            _assert_safe(str(e))
            refused += 1
            continue
        replayed += 1
        for draw in (render.render_conversation, render.render_user_live, render.render_status):
            draw(current)
        render.render_stats(current)
        charts.breakdown_figure(current).to_plotly_json()
        charts.ttfb_figure(current).to_plotly_json()
    assert replayed and refused


# --------------------------------------------------------------------------- what reaches the page


def hostile_session() -> list[ev.Event]:
    """One of every event, every text field holding markup and a Plotly placeholder."""
    events = [ev.SessionStarted(0), ev.ProvidersChanged(0, HOSTILE, HOSTILE, HOSTILE)]
    for event in every_event():
        texts = {f.name: HOSTILE for f in fields(event) if isinstance(getattr(event, f.name), str)}
        if isinstance(event, ev.LatencyMeasured):
            texts["contributions"] = ((HOSTILE, 0.3), ("LLM inference", 0.2))
        if isinstance(event, ev.UserTranscript):
            events.append(ev.UserTranscript(event.t, HOSTILE, final=False))
        if isinstance(event, ev.SessionEnded | ev.ErrorReported):
            continue  # shown too, but they end the session's status
        events.append(type(event)(**{**event.__dict__, **texts}))
    events += [ev.ErrorReported(9, HOSTILE), ev.UserStartedSpeaking(10)]
    events += [ev.UserTranscript(10, HOSTILE), ev.UserTranscript(10, HOSTILE, final=False)]
    events += [ev.ServiceTTFB(11, stage, HOSTILE, HOSTILE, 0.1) for stage in ("stt", "tts")]
    # A reply still being spoken.
    events += [ev.BotThinking(12), ev.BotToken(12, f"{HOSTILE} and {HOSTILE}")]
    events += [ev.BotWordStarted(13, HOSTILE), ev.BotWordStarted(14, HOSTILE)]
    return events


def test_the_pages_html_escapes_everything_a_file_can_hold():
    current = fold(state.reduce, hostile_session(), state.initial_state())
    assert current.error and current.user_interim and current.turns and current.providers
    assert current.bot.spoken and current.bot.speaking
    for html in (
        render.render_conversation(current),
        render.render_user_live(current),
        render.render_status(current),
        render.render_stats(current),
    ):
        assert "<a " not in html and "<img" not in html, html


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif hasattr(value, "tolist"):
        yield from _strings(value.tolist())


# What the charts themselves put in labels and hover templates.
OWN_MARKUP = ("<br>", "<sub>", "</sub>", "<extra></extra>", "%{y:.0f}", "%{customdata}")


def test_chart_labels_show_a_files_text_but_never_as_markup_or_placeholders():
    events = hostile_session()
    events += one_turn(t0=20)  # a second turn with the hostile providers
    current = fold(state.reduce, events, state.initial_state())
    figures = [charts.breakdown_figure(current), charts.ttfb_figure(current)]
    data = [trace for figure in figures for trace in figure.to_plotly_json()["data"]]
    shown = list(_strings(data))
    assert any("&lt;a href" in text for text in shown), "the label is still shown, escaped"
    for text in shown:
        for markup in OWN_MARKUP:
            text = text.replace(markup, "")
        assert "<" not in text and ">" not in text and "%{" not in text, text


def test_chart_text_is_what_plotly_shows_as_the_original():
    assert charts.chart_text("Groq llama") == "Groq llama"
    assert charts.chart_text("<b>&%{x}") == "&lt;b&gt;&amp;%&#123;x}"
    assert len(charts.chart_text("x" * 10_000)) == 60


# --------------------------------------------------------------------------- export retention


def test_exports_older_than_the_age_limit_or_beyond_the_count_are_deleted(tmp_path):
    kept = export.Retention(max_files=3, max_age_secs=600)
    events = [ev.SessionStarted(0), *one_turn()]
    now = time.time()
    old = export.write_export(events, tmp_path, kept)
    os.utime(old, (now - 601, now - 601))
    recent = []
    assert old.exists()
    for age in (300, 200, 100):
        path = export.write_export(events, tmp_path, kept)
        os.utime(path, (now - age, now - age))
        recent.append(path)
        assert not old.exists(), "older than 10 minutes"
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("not an export")
    newest = export.write_export(events, tmp_path, kept)
    assert set(tmp_path.glob(export.EXPORT_GLOB)) == {recent[1], recent[2], newest}, "newest 3"
    assert unrelated.exists()


def test_export_retention_defaults_and_overrides():
    from pipeline.server_settings import ServerSettings, SettingsError

    default = ServerSettings.from_environ({})
    assert (default.export_max_files, default.export_max_age_secs) == (200, 3600.0)
    assert export.Retention() == export.Retention(200, 3600.0)
    given = {"VOICE_LAB_EXPORT_MAX_FILES": "5", "VOICE_LAB_EXPORT_MAX_AGE_SECS": "90"}
    settings = ServerSettings.from_environ(given)
    assert (settings.export_max_files, settings.export_max_age_secs) == (5, 90.0)
    with pytest.raises(SettingsError, match="VOICE_LAB_EXPORT_MAX_FILES"):
        ServerSettings.from_environ({"VOICE_LAB_EXPORT_MAX_FILES": "0"})


def test_the_retention_settings_are_documented():
    documented = (Path(__file__).parent.parent / ".env.example").read_text()
    assert "VOICE_LAB_EXPORT_MAX_FILES=200" in documented
    assert "VOICE_LAB_EXPORT_MAX_AGE_SECS=3600" in documented


# --------------------------------------------------------------------------- every view


def _drawn(value):
    """A view's output in comparable form (a figure as its JSON)."""
    return value.to_plotly_json() if hasattr(value, "to_plotly_json") else value


def test_a_replayed_export_reproduces_every_view(tmp_path):
    from tests.test_timeline import T0, spoken_turn
    from ui import views

    bot_talking = spoken_turn(T0)[:-4]
    cough = [ev.UserStartedSpeaking(T0 + 3.3), ev.Interrupted(T0 + 3.3)]
    cough += [ev.UserTranscript(T0 + 3.9, "", final=True), ev.UserStoppedSpeaking(T0 + 4.0)]
    events = [ev.SessionStarted(T0 - 1)]
    events += [ev.ProvidersChanged(T0 - 1, "Groq whisper-large-v3-turbo", "Groq x", "ElevenLabs y")]
    events += [*bot_talking, *cough, *spoken_turn(T0 + 10, "And Spain?")]
    live = fold(state.reduce, events, state.initial_state())
    assert live.turn_logs.gaps and live.turn_logs.false_interruptions == 1

    replayed = export.load_replay(export.write_export(events, tmp_path))

    for view, shown, again in zip(
        views.VIEWS, views.render_all(live), views.render_all(replayed), strict=True
    ):
        assert _drawn(again) == _drawn(shown), f"#{view.name} differs after replay"
    metrics = json.loads(next(tmp_path.glob(export.EXPORT_GLOB)).read_text())["metrics"]
    assert metrics["output_health"]["false_interruptions"] == 1
    assert metrics["cost_usd"]["session"] > 0
