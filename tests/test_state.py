"""The reducer and renderers, from scripted event lists (pure: no pipeline, no clock)."""

from functools import reduce as fold

from pipeline import events as ev
from ui import render, state


def run(*events: ev.Event) -> state.SessionState:
    return fold(state.reduce, events, state.initial_state())


def one_turn(t0: float = 0.0, user="Hello there", bot="Hi! How can I help?"):
    return [
        ev.UserStartedSpeaking(t0 + 0.1),
        ev.UserTranscript(t0 + 1.0, user),
        ev.UserStoppedSpeaking(t0 + 1.1),
        ev.UserTurnText(t0 + 1.1, user),
        ev.BotThinking(t0 + 1.2),
        ev.BotStartedSpeaking(t0 + 1.8),
        ev.LatencyMeasured(t0 + 1.8, 0.9, (("transcription", 0.4),)),
        ev.BotStoppedSpeaking(t0 + 3.0),
        ev.BotTurnText(t0 + 3.0, bot),
    ]


def test_status_follows_the_turn():
    seen = []
    current = state.initial_state()
    for event in [ev.SessionStarted(0), *one_turn()]:
        current = state.reduce(current, event)
        seen.append(current.status)
    assert seen[0] == "listening"
    assert "hearing" in seen and "thinking" in seen and "speaking" in seen
    assert seen[-1] == "listening"


def test_a_turn_lands_in_the_conversation():
    final = run(ev.SessionStarted(0), *one_turn())
    assert [(t.role, t.text) for t in final.turns] == [
        ("user", "Hello there"),
        ("bot", "Hi! How can I help?"),
    ]
    assert final.latencies == (0.9,)
    html = render.render_conversation(final)
    assert "Hello there" in html and "Hi! How can I help?" in html


def test_live_transcript_shows_until_the_turn_is_committed():
    partial = run(ev.SessionStarted(0), ev.UserStartedSpeaking(1), ev.UserTranscript(2, "one two"))
    assert partial.user_live == "one two"
    assert "one two" in render.render_conversation(partial)
    committed = state.reduce(partial, ev.UserTurnText(3, "one two"))
    assert committed.user_live == ""


def test_interruption_is_counted_only_when_the_bot_was_speaking():
    idle = run(ev.SessionStarted(0), ev.UserStartedSpeaking(1), ev.Interrupted(1))
    assert idle.interruptions == 0
    talking = run(
        ev.SessionStarted(0), *one_turn()[:6], ev.UserStartedSpeaking(2), ev.Interrupted(2)
    )
    assert talking.interruptions == 1
    cut = state.reduce(talking, ev.BotTurnText(2.1, "Hi!", interrupted=True))
    assert cut.turns[-1].interrupted
    assert "(interrupted)" in render.render_conversation(cut)


def test_empty_bot_turn_is_not_shown():
    final = run(ev.SessionStarted(0), ev.BotTurnText(1, "   "))
    assert final.turns == ()
    assert "will appear here" in render.render_conversation(final)


def test_errors_are_shown_in_plain_words_and_fatal_ones_change_status():
    soft = run(ev.SessionStarted(0), ev.ErrorReported(1, "Groq refused the key"))
    assert soft.status == "listening"
    assert "Groq refused the key" in render.render_status(soft)
    fatal = run(ev.SessionStarted(0), ev.ErrorReported(1, "pipeline died", fatal=True))
    assert fatal.status == "error"
    assert run(ev.SessionStarted(0), ev.SessionEnded(2)).status == "ended"


def test_user_text_is_escaped():
    final = run(ev.SessionStarted(0), ev.UserTurnText(1, "<script>alert(1)</script>"))
    assert "<script>" not in render.render_conversation(final)


def test_long_session_keeps_what_is_sent_bounded():
    events = [ev.SessionStarted(0)]
    for i in range(120):
        events += one_turn(t0=i * 5, user=f"question {i}", bot=f"answer {i}")
    final = run(*events)
    assert len(final.turns) == 240
    html = render.render_conversation(final)
    assert "answer 119" in html and "question 0<" not in html
    assert f"{240 - render.VISIBLE_TURNS} earlier turns" in html
    assert len(final.latencies) == min(120, state.LATENCY_WINDOW)
