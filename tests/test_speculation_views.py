"""The dashboard's account of speculative turns, from scripted events (no pipeline)."""

from __future__ import annotations

from functools import reduce as fold

from pipeline import events as ev
from ui import charts, export, render, state


def scripted_session() -> list[ev.Event]:
    """Two turns: the first kept a discarded guess then an adopted one; the second, only a drop."""
    return [
        ev.SessionStarted(0.0),
        ev.UserStartedSpeaking(1.0),
        ev.SpeculationStarted(1.5, "what is the capital"),
        ev.SpeculationEnded(1.6, False, "resumed", wasted_tokens=7),
        ev.SpeculationStarted(2.0, "what is the capital of france"),
        ev.UserStoppedSpeaking(2.3),
        ev.SpeculationEnded(2.3, True, "confirmed", saved_ms=240.0),
        ev.UserTurnText(2.31, "what is the capital of france"),
        ev.LatencyMeasured(2.9, 0.6, (("LLM inference", 0.2),)),
        ev.BotTurnText(4.0, "Paris."),
        ev.UserStartedSpeaking(5.0),
        ev.SpeculationStarted(5.5, "and of spain"),
        ev.SpeculationEnded(5.6, False, "transcript changed", wasted_tokens=3),
        ev.UserStoppedSpeaking(5.8),
        ev.UserTurnText(5.9, "and of spain please"),
        ev.LatencyMeasured(6.9, 1.0, (("LLM inference", 0.3),)),
        ev.BotTurnText(8.0, "Madrid."),
    ]


def test_each_turn_is_marked_and_the_running_count_is_shown():
    final = fold(state.reduce, scripted_session(), state.initial_state())
    assert final.speculation == state.SpeculationCounts(
        started=3, adopted=1, discarded=2, wasted_tokens=10
    )
    assert [t.speculation for t in final.latency] == ["adopted", "discarded"]
    stats = render.render_stats(final)
    assert "1 · 2" in stats and "adopted · discarded" in stats
    assert "240 ms" in stats  # the adopted turn's head start
    ticks = list(charts.breakdown_figure(final).data[0].x)
    assert ticks[0].startswith("1 ⚡") and ticks[1].startswith("2 ↺")


def test_a_session_without_speculation_shows_no_speculation_figures():
    events = [e for e in scripted_session() if "Speculation" not in e.kind]
    final = fold(state.reduce, events, state.initial_state())
    assert "speculated" not in render.render_stats(final)
    assert [t.speculation for t in final.latency] == ["", ""]


def test_the_speculation_figures_survive_export_and_replay(tmp_path):
    events = scripted_session()
    replayed = export.load_replay(export.write_export(events, tmp_path))
    assert replayed.speculation == fold(state.reduce, events, state.initial_state()).speculation
    assert render.render_stats(replayed) == render.render_stats(
        fold(state.reduce, events, state.initial_state())
    )


def test_a_speculative_replys_first_token_counts_for_the_turn_being_spoken():
    events = [
        ev.SessionStarted(0.0),
        ev.UserStartedSpeaking(1.0),
        ev.SpeculationStarted(1.5, "hello"),
        ev.ServiceTTFB(1.8, "llm", "GroqLLMService", "llama", 0.3),  # before the turn ends
        ev.UserStoppedSpeaking(1.9),
        ev.SpeculationEnded(1.9, True, "confirmed", saved_ms=400.0),
        ev.UserTurnText(1.91, "hello"),
    ]
    final = fold(state.reduce, events, state.initial_state())
    assert [(t.turn, t.stage, t.interrupted) for t in final.ttfb] == [(1, "llm", False)]
