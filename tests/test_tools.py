"""Tools through the real pipeline: Piper-made speech in, pipecat's Groq LLM against the fake.

The Groq fake calls a tool when the user's words ask for one (an order number,
"cancel", "time in <city>") and speaks the tool results in its follow-up, as a
model would. What is asserted is what a visitor notices: the status of their
order in the spoken reply, the waiting phrase while a slow tool works, the
apology when one fails, an interruption that never undoes a cancellation, and
the tool's time on the dashboard.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3

import gradio as gr
import pytest
from pipecat.services.llm_service import LLMService
from pipecat.utils.types import NOT_GIVEN

from pipeline import events as ev
from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys
from pipeline.providers.registry import choice_for
from pipeline.server_settings import ServerSettings
from pipeline.tools import catalog
from pipeline.tools.db import session_database
from pipeline.tools.installer import ToolRunner, database_of, offered
from testkit.driver import SessionDriver
from testkit.speech import silence, speech_pcm
from tests import test_providers
from ui import charts, export, render, state, timeline
from ui.settings import (
    _tools_control,
    build_settings_panel,
    config_from_settings,
    initial_settings,
)

GROQ_KEY = test_providers.GROQ_KEY
ORDER_QUESTION = "Where is my order 1234?"
CANCEL_REQUEST = "Please cancel my order 4821."
TIME_QUESTION = "What time is it in Tokyo?"


class Transcripts:
    """What the fake Groq Whisper "hears", one utterance after another (the last one repeats)."""

    def __init__(self, *texts: str):
        self.texts = list(texts)

    def __call__(self, _wav: bytes) -> str:
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


# The Groq fake as the provider tests start it, and their session builder.
groq = test_providers.groq
session_with = test_providers.session_with


def config(llm: str = "groq", **knobs) -> SessionConfig:
    return SessionConfig(
        keys=ProviderKeys({"groq": GROQ_KEY}),
        stt=choice_for("groq", "stt"),
        llm=choice_for(llm, "llm"),
        tts=choice_for("groq", "tts"),
        **knobs,
    )


async def say(d: SessionDriver, text: str, timeout: float = 30) -> None:
    """Say ``text`` and listen until a reply with words in it has been spoken to the end."""
    replies = len([e for e in d.events("BotTurnText") if e.text])
    await d.play(speech_pcm(text))
    await d.play_silence_until(
        lambda: len([e for e in d.events("BotTurnText") if e.text]) > replies, timeout
    )


def spoken(d: SessionDriver) -> str:
    return " ".join(e.text for e in d.events("BotTurnText") if e.text)


@pytest.mark.slow
async def test_a_spoken_order_number_is_looked_up_and_its_status_spoken(models, groq):
    groq.transcript = Transcripts(ORDER_QUESTION)
    async with SessionDriver(session_with(models, config())) as d:
        await say(d, "Where is my order one two three four?")
        await d.play_silence_until(lambda: d.events("LatencyMeasured"), 5)

        started, finished = d.events("ToolCallStarted"), d.events("ToolCallFinished")
        assert [e.name for e in started] == ["lookup_order"]
        assert json.loads(started[0].arguments) == {"order_number": "1234"}
        assert finished[0].ok and finished[0].call_id == started[0].call_id
        # The row's status, as a sentence, is what the bot said.
        row = (
            database_of(d.session.generation.context)
            .execute("SELECT item, status FROM orders WHERE number = '1234'")
            .fetchone()
        )
        assert row["item"] in spoken(d) and row["status"] in spoken(d)
        assert "tomorrow afternoon" in spoken(d)
        # The tools were offered, and the follow-up carried the result back.
        chats = groq.requests_to("chat")
        assert {t["function"]["name"] for t in chats[0].json["tools"]} == {
            t.name for t in catalog.TOOLS
        }
        tool_message = next(m for m in chats[-1].messages if m["role"] == "tool")
        assert tool_message["tool_call_id"] == started[0].call_id
        assert row["item"] in tool_message["content"]
        # On the dashboard: the call, its duration, and the turn's tool time.
        shown = d.session.snapshot()
        call = shown.tool_calls[-1]
        assert call.name == "lookup_order" and call.ok and call.seconds is not None
        assert shown.latency[-1].tool_seconds == pytest.approx(call.seconds, abs=1e-6)
        assert not d.events("ErrorReported")
        page = render.render_conversation(shown)
        assert 'data-tool="lookup_order"' in page and "tool-ok" in page
        # The turn timeline's tool lane has the call (ui.timeline draws it from the events).
        assert "lookup_order" in json.dumps(timeline.timeline_spec(shown))
        # An exported session replays the call, its card and its time.
        replayed = export.replay(
            json.loads(json.dumps(export.export_session(list(d.session.events))))
        )
        assert replayed.tool_calls == shown.tool_calls
        assert replayed.latency[-1].tool_seconds == shown.latency[-1].tool_seconds
        assert render.render_conversation(replayed) == page


@pytest.mark.slow
async def test_the_waiting_phrase_is_heard_while_slow_tools_work(models, groq, monkeypatch):
    """Two slow lookups in one turn: one waiting phrase, then both answers."""
    monkeypatch.setenv("VOICE_LAB_TOOL_LATENCY_SECS", "1.6")
    groq.transcript = Transcripts("Where are my orders 1234 and 5150?")
    async with SessionDriver(session_with(models, config())) as d:
        await say(d, "Where are my orders one two three four and five one five zero?")
        await d.play_silence_until(lambda: "running shoes" in spoken(d), 15)

        started, finished = d.events("ToolCallStarted"), d.events("ToolCallFinished")
        assert [e.name for e in started] == ["lookup_order", "lookup_order"]
        phrase = next(e for e in d.events("BotSentenceStarted") if "check" in e.text)
        assert phrase.text == "Let me check that for you."
        # Heard after the threshold, while the tools were still working.
        assert 0.7 < phrase.t - started[0].t < 1.4
        assert phrase.t < min(e.t for e in finished)
        assert spoken(d).count("Let me check") == 1
        assert "wireless headphones" in spoken(d) and "running shoes" in spoken(d)
        # Voice-to-voice ends at the phrase; the turn's tool time is the calls' wall clock.
        shown = d.session.snapshot()
        assert shown.latency[0].seconds < 1.6
        assert 1.55 < shown.latency[0].tool_seconds < 2.5


@pytest.mark.slow
async def test_a_cancellation_survives_a_barge_in_exactly_once(models, groq, monkeypatch):
    """Spoken over while cancelling: the order is cancelled once, and the question answered."""
    monkeypatch.setenv("VOICE_LAB_TOOL_LATENCY_SECS", "2.5")
    texts = [CANCEL_REQUEST, TIME_QUESTION]
    async with SessionDriver(session_with(models, config())) as d:
        # What the fake Whisper hears depends on the turn, however often it is asked.
        groq.transcript = lambda _wav: texts[min(len(d.events("UserTurnText")), 1)]
        await d.play(speech_pcm("Please cancel my order four eight two one."))
        await d.play_silence_until(lambda: d.events("BotStartedSpeaking"), 15)
        assert not d.events("ToolCallFinished"), "the cancellation answered before the barge-in"
        await d.play(speech_pcm("What time is it in Tokyo?"))
        await d.play_silence_until(
            lambda: "Tokyo" in spoken(d) and "is now cancelled" in spoken(d), 20
        )

        cancel = [e for e in d.events("ToolCallStarted") if e.name == "cancel_order"]
        done = [e for e in d.events("ToolCallFinished") if e.name == "cancel_order"]
        assert len(cancel) == 1 and len(done) == 1 and done[0].ok
        interrupted = d.events("Interrupted")
        assert any(cancel[0].t < e.t < done[0].t for e in interrupted), "no barge-in mid-call"
        db = database_of(d.session.generation.context)
        assert db.execute("SELECT status FROM orders WHERE number = '4821'").fetchone()[0] == (
            "cancelled"
        )
        assert (
            db.execute("SELECT count(*) FROM actions WHERE order_number = '4821'").fetchone()[0]
            == 1
        )
        # The context records the cancellation, and the interruption was answered.
        context = json.dumps(d.session.generation.context.get_messages())
        assert "is now cancelled" in context
        asked = d.events("UserTurnText")[-1]
        assert "Tokyo" in asked.text
        assert any("Tokyo" in e.text for e in d.events("BotTurnText") if e.t > asked.t)
        assert not d.events("ErrorReported")


@pytest.mark.slow
async def test_a_lookup_spoken_over_is_cancelled_and_the_new_question_answered(
    models, groq, monkeypatch
):
    """A read-only tool is cancelled by a barge-in, as pipecat does by default."""
    monkeypatch.setenv("VOICE_LAB_TOOL_LATENCY_SECS", "2.5")
    texts = [ORDER_QUESTION, TIME_QUESTION]
    async with SessionDriver(session_with(models, config())) as d:
        groq.transcript = lambda _wav: texts[min(len(d.events("UserTurnText")), 1)]
        await d.play(speech_pcm("Where is my order one two three four?"))
        await d.play_silence_until(lambda: d.events("BotStartedSpeaking"), 15)
        await d.play(speech_pcm("What time is it in Tokyo?"))
        await d.play_silence_until(lambda: "Tokyo" in spoken(d), 20)
        await d.play(silence(3.0))  # past the lookup's 2.5 s: nothing more may come of it

        lookup = [e for e in d.events("ToolCallFinished") if e.name == "lookup_order"]
        assert len(lookup) == 1 and not lookup[0].ok and "spoke over" in lookup[0].result
        assert "wireless headphones" not in spoken(d)
        context = json.dumps(d.session.generation.context.get_messages())
        assert "wireless headphones" not in context and "CANCELLED" in context


def _failing(name: str, error: Exception):
    def run(*_args):
        raise error

    return tuple(dataclasses.replace(t, run=run) if t.name == name else t for t in catalog.TOOLS)


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["exception", "timeout", "unknown order"])
async def test_a_failing_tool_is_apologised_for_and_shown(models, groq, monkeypatch, failure):
    question = ORDER_QUESTION
    if failure == "exception":
        monkeypatch.setattr(
            catalog, "TOOLS", _failing("lookup_order", sqlite3.OperationalError("disk I/O error"))
        )
    elif failure == "timeout":
        monkeypatch.setenv("VOICE_LAB_TOOL_TIMEOUT_SECS", "0.5")
        monkeypatch.setenv("VOICE_LAB_TOOL_WAIT_PHRASE_SECS", "5")
        monkeypatch.setenv("VOICE_LAB_TOOL_LATENCY_SECS", "3")
    else:
        question = "Where is my order 999?"
    groq.transcript = Transcripts(question)
    async with SessionDriver(session_with(models, config())) as d:
        await say(d, "Where is my order one two three four?")

        finished = d.events("ToolCallFinished")
        assert len(finished) == 1 and not finished[0].ok
        reply = spoken(d)
        if failure == "unknown order":
            assert "can't find an order number 9 9 9" in reply
            assert not d.events("ErrorReported")
        else:
            assert reply.startswith("Sorry, I couldn't reach the order system")
            message = d.events("ErrorReported")[-1].message
            assert "lookup_order" in message and "apologised" in message
            assert ("disk I/O error" if failure == "exception" else "0.5 s") in message
        card = render.render_conversation(d.session.snapshot())
        assert "tool-failed" in card and "running" not in card


@pytest.mark.slow
async def test_tools_are_never_offered_to_the_local_llm(models, groq):
    """Not at the start, and not after a switch from an LLM that had them."""
    groq.transcript = Transcripts(ORDER_QUESTION)
    async with SessionDriver(session_with(models, config(llm="local"))) as d:
        assert d.session.generation.context.tools is NOT_GIVEN
        processors = d.session.generation.worker.pipeline.processors_with_metrics()
        llms = [p for p in processors if isinstance(p, LLMService)]
        assert llms and not any(llm.has_function(t.name) for llm in llms for t in catalog.TOOLS)

    async with SessionDriver(session_with(models, config())) as d:
        await say(d, "Where is my order one two three four?")
        assert d.events("ToolCallFinished")
        asked_groq = len(groq.requests_to("chat"))
        d.session.request_config(config(llm="local"))
        await d.play_silence_until(lambda: len(d.events("ProvidersChanged")) == 2, 10)
        assert d.session.generation.context.tools is NOT_GIVEN
        await say(d, "Thank you, that is all.", timeout=45)
        assert len(d.events("ToolCallStarted")) == 1
        assert len(groq.requests_to("chat")) == asked_groq, "the local turn went to Groq"


def test_the_registry_decides_who_gets_tools_and_the_server_can_turn_them_off(monkeypatch):
    """The capability flag, never a provider's name; VOICE_LAB_TOOLS=0 overrides the page."""
    assert offered(config()) and not offered(config(llm="local"))
    assert not offered(dataclasses.replace(config(), tools=False))
    values = initial_settings()
    assert _tools_control(values, "local", True)["interactive"] is False
    assert "cannot call tools" in _tools_control(values, "local", True)["info"]
    assert _tools_control(values.with_knob("tools", True), "groq", True)["interactive"] is True
    off = ServerSettings(tools=False)
    assert config_from_settings(values.with_knob("tools", True), off).tools is False
    toggle = _tools_control(values.with_knob("tools", True), "groq", off.tools)
    assert toggle["interactive"] is False and "VOICE_LAB_TOOLS=0" in toggle["info"]
    monkeypatch.setenv("VOICE_LAB_TOOLS", "0")  # what a config made without the app's reads
    assert not offered(config())
    assert config_from_settings(initial_settings().with_knob("tools", True)).tools is False


# --------------------------------------------------------------------------- without speech


def _call(t: float, call_id: str, name: str = "lookup_order", secs: float = 0.5, ok: bool = True):
    return [
        ev.ToolCallStarted(t, call_id, name, '{"order_number": "1234"}'),
        ev.ToolCallFinished(t + secs, call_id, name, ok, f"{name} answered"),
    ]


def _fold(events) -> state.SessionState:
    shown = state.initial_state()
    for event in events:
        shown = state.reduce(shown, event)
    return shown


def test_tool_time_is_its_own_part_of_the_turn_and_of_its_chart_bar():
    """Parallel calls count once; a call that outlasted the first audio still counts."""
    events = [
        ev.SessionStarted(0.0),
        ev.UserTurnText(1.0, "Where are orders 1234 and 5150?"),
        *_call(1.2, "a", secs=0.6),
        *_call(1.3, "b", secs=0.6)[:1],
        ev.LatencyMeasured(1.5, 0.9, (("LLM inference", 0.2), ("pipeline", 0.7))),
        _call(1.3, "b", secs=1.0)[1],
        ev.BotTurnText(3.0, "Both are on their way."),
    ]
    shown = _fold(events)
    assert [c.call_id for c in shown.tool_calls] == ["a", "b"]
    assert shown.latency[-1].tool_seconds == pytest.approx(1.1)  # 1.2 -> 2.3, not 0.6 + 1.0
    bars = {trace["name"]: trace["y"] for trace in charts.breakdown_figure(shown).data}
    assert list(bars["tool"]) == [pytest.approx(1100)]


def test_tool_cards_sit_after_the_turn_that_asked_and_show_what_happened():
    events = [
        ev.SessionStarted(0.0),
        ev.UserTurnText(1.0, "Where is order 1234?"),
        *_call(1.2, "a"),
        ev.BotTurnText(2.0, "It ships tomorrow."),
        ev.UserTurnText(3.0, "Cancel order <b>9</b>."),
        *_call(3.2, "b", "cancel_order", ok=False)[:1],
    ]
    shown = _fold(events)
    page = render.render_conversation(shown)
    order = [page.index(text) for text in ("Where is order", "tool-ok", "It ships", "Cancel")]
    assert order == sorted(order)
    assert page.index("tool-running") > page.index("Cancel") and "<b>9" not in page
    finished = _fold([*events, _call(3.2, "b", "cancel_order", ok=False)[1]])
    card = render.render_tool_card(finished.tool_calls[-1])
    assert "tool-failed" in card and "500 ms" in card and "cancel_order answered" in card


class _Params:
    """What pipecat hands a tool handler, as far as the runner reads it."""

    def __init__(self, arguments):
        self.tool_call_id, self.arguments, self.llm = "call_x", arguments, None


@pytest.mark.parametrize(
    ("arguments", "kind"), [([1234], "array"), ("1234", "string"), (1234, "number")]
)
async def test_arguments_that_are_not_an_object_are_a_failing_call_apologised_for(arguments, kind):
    """pipecat passes on whatever JSON the LLM wrote; only an object is a tool's arguments."""
    seen: list[ev.Event] = []
    runner = ToolRunner(session_database(), seen.append)
    tool = catalog.TOOLS[0]
    fact = await runner.call(tool, _Params(arguments))
    assert fact == tool.apology
    started = next(e for e in seen if isinstance(e, ev.ToolCallStarted))
    assert started.arguments == json.dumps(arguments)
    finished = next(e for e in seen if isinstance(e, ev.ToolCallFinished))
    assert not finished.ok and finished.result == tool.apology
    (error,) = [e for e in seen if isinstance(e, ev.ErrorReported)]
    assert f"not an object (a JSON {kind})" in error.message


async def test_arguments_that_look_like_secrets_never_reach_the_page():
    seen: list[ev.Event] = []
    runner = ToolRunner(session_database(), seen.append)
    await runner.call(catalog.TOOLS[0], _Params({"order_number": "gsk_" + "a1" * 12}))
    shown = next(e for e in seen if isinstance(e, ev.ToolCallStarted)).arguments
    assert "gsk_" not in shown and "***" in shown
    finished = next(e for e in seen if isinstance(e, ev.ToolCallFinished))
    assert not finished.ok and "I can't find an order number" in finished.result


def test_each_session_gets_its_own_orders():
    first, second = session_database(), session_database()
    now = dt.datetime.now().astimezone()
    catalog.cancel_order(first, {"order_number": "4821"}, "call_1", now)
    assert first.execute("SELECT status FROM orders WHERE number = '4821'").fetchone()[0] == (
        "cancelled"
    )
    assert second.execute("SELECT status FROM orders WHERE number = '4821'").fetchone()[0] == (
        "processing"
    )
    # The same call again changes nothing and says the same; another call is refused.
    again = catalog.cancel_order(first, {"order_number": "4821"}, "call_1", now)
    assert "is now cancelled" in again
    with pytest.raises(catalog.ToolRefusal, match="already cancelled"):
        catalog.cancel_order(first, {"order_number": "4821"}, "call_2", now)
    assert first.execute("SELECT count(*) FROM actions").fetchone()[0] == 1


def test_the_panel_disables_the_tools_toggle_for_an_llm_that_cannot_call_them():
    """Picking the local LLM greys the toggle out and says why; picking Groq enables it again."""
    with gr.Blocks() as page:
        build_settings_panel(ServerSettings())
    components = {block._id: block for block in page.blocks.values()}
    on_pick = next(
        fn
        for fn in page.fns.values()
        if [o.elem_id for o in fn.outputs] == ["tools-toggle"]
        and components[fn.targets[0][0]].elem_id == "llm-provider"
    )
    local = on_pick.fn(initial_settings(), "local")
    assert local["interactive"] is False and local["value"] is False
    assert "SmolLM2" in local["info"] and "cannot call tools" in local["info"]
    groq_ = on_pick.fn(initial_settings().with_knob("tools", True), "groq")
    assert groq_["interactive"] is True and groq_["value"] is True
    schemas = next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == "tool-schemas")
    assert {s["function"]["name"] for s in schemas.value} == {t.name for t in catalog.TOOLS}
