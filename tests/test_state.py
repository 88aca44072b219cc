"""The reducer, renderers and charts, from scripted event lists (pure: no pipeline, no clock)."""

import json
from functools import reduce as fold

from pipeline import events as ev
from testkit.folding import folded
from ui import charts, export, render, state

run = folded


BREAKDOWN = (("endpointing wait", 0.2), ("transcription", 0.35), ("LLM inference", 0.15))


def one_turn(t0: float = 0.0, user="Hello there", bot="Hi! How can I help?", v2v=0.9):
    return [
        ev.UserStartedSpeaking(t0 + 0.1),
        ev.UserTranscript(t0 + 0.6, "Hello", final=False),
        # pipecat reports the STT TTFB as the transcript arrives, before the turn is committed.
        ev.ServiceTTFB(t0 + 1.0, "stt", "LocalWhisperSTTService#0", "Whisper", 0.35),
        ev.UserTranscript(t0 + 1.0, user),
        ev.UserStoppedSpeaking(t0 + 1.1),
        ev.UserTurnText(t0 + 1.1, user),
        ev.BotThinking(t0 + 1.2),
        ev.ServiceTTFB(t0 + 1.3, "llm", "LocalLlamaLLMService#0", "SmolLM2", 0.1),
        *[ev.BotToken(t0 + 1.3 + i / 100, w + " ") for i, w in enumerate(bot.split())],
        ev.BotSentenceStarted(t0 + 1.7, bot),
        ev.ServiceTTFB(t0 + 1.8, "tts", "LocalPiperTTSService#0", "Piper", 0.09),
        ev.BotStartedSpeaking(t0 + 1.8),
        ev.LatencyMeasured(t0 + 1.8, v2v, BREAKDOWN),
        ev.UsageReported(t0 + 1.9, "llm", 40),
        ev.UsageReported(t0 + 1.9, "tts", len(bot)),
        ev.BotSpoken(t0 + 3.0, bot),
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


def test_a_turn_lands_in_the_conversation_and_the_dashboard():
    final = run(ev.SessionStarted(0), *one_turn())
    assert [(t.role, t.text) for t in final.turns] == [
        ("user", "Hello there"),
        ("bot", "Hi! How can I help?"),
    ]
    assert [entry.seconds for entry in final.latency] == [0.9]
    assert final.latency[0].turn == 1
    assert {p.stage for p in final.ttfb} == {"stt", "llm", "tts"}
    assert final.usage == state.Usage(llm_tokens=40, tts_characters=19)
    html = render.render_conversation(final)
    assert "Hello there" in html and "Hi! How can I help?" in html
    stats = render.render_stats(final)
    assert "900 ms" in stats and ">1<" in stats  # last/p50/p95 and the turn count


def test_interim_words_grow_then_settle():
    partial = run(
        ev.SessionStarted(0), ev.UserStartedSpeaking(1), ev.UserTranscript(1.5, "one", final=False)
    )
    assert "one" in render.render_user_live(partial)
    grown = state.reduce(partial, ev.UserTranscript(2, "one two three", final=False))
    assert grown.user_interim == "one two three"
    settled = state.reduce(grown, ev.UserTranscript(2.5, "one two three four"))
    assert settled.user_live == "one two three four" and settled.user_interim == ""
    committed = state.reduce(settled, ev.UserTurnText(3, "one two three four"))
    assert committed.user_live == "" and "empty" in render.render_user_live(committed)


def test_reply_streams_and_the_spoken_sentence_is_highlighted():
    events = [ev.SessionStarted(0), *one_turn(bot="First sentence here. Second one follows.")]
    upto_tokens = run(*events[:15])
    assert upto_tokens.bot.generated.startswith("First sentence")
    html = render.render_conversation(upto_tokens)
    assert 'data-role="bot-live"' in html and 'class="pending"' in html
    speaking = run(ev.BotSentenceStarted(2, "First sentence here."), start=upto_tokens)
    html = render.render_conversation(speaking)
    assert '<mark class="speaking">First sentence here.</mark>' in html
    assert "Second one follows." in html.split("</mark>")[1]
    heard = run(
        ev.BotSpoken(3, "First sentence here."),
        ev.BotSentenceStarted(3, "Second one follows."),
        start=speaking,
    )
    html = render.render_conversation(heard)
    assert '<span class="spoken">First sentence here.</span>' in html
    assert '<mark class="speaking">Second one follows.</mark>' in html


def test_interrupted_reply_is_marked_with_its_unspoken_rest_struck_through():
    reply = "The knight rode out at dawn. He met a dragon by the river. It was asleep."
    before_end = [e for e in one_turn(bot=reply) if not isinstance(e, ev.BotSpoken)][:-2]
    cut = run(
        ev.SessionStarted(0),
        *before_end,
        ev.BotSpoken(2.5, "The knight rode out at dawn."),
        ev.UserStartedSpeaking(2.6),
        ev.Interrupted(2.6),
        ev.ServiceTTFB(2.7, "tts", "LocalPiperTTSService#0", "Piper", 0.5),
        ev.ServiceTTFB(2.8, "stt", "LocalWhisperSTTService#0", "Whisper", 0.3),
        ev.BotStoppedSpeaking(2.6),
        ev.BotTurnText(2.6, "The knight rode out at dawn.", interrupted=True),
    )
    bot = cut.turns[-1]
    assert bot.interrupted and bot.text == "The knight rode out at dawn."
    assert bot.unspoken == "He met a dragon by the river. It was asleep."
    html = render.render_conversation(cut)
    assert '<s class="unspoken"' in html and "(interrupted)" in html
    assert cut.interruptions == 1
    assert cut.latency[-1].interrupted
    late_tts, interrupting_stt = cut.ttfb[-2:]
    assert late_tts.interrupted, "a TTFB reported after the barge-in must be tagged"
    assert not interrupting_stt.interrupted and interrupting_stt.turn == 2
    assert "500 ms" not in render.render_stats(cut)  # tagged values stay out of the figures
    assert "✂" in charts.breakdown_figure(cut).to_plotly_json()["data"][0]["x"][0]


def test_empty_turns_and_out_of_order_metrics():
    # A latency report arriving before the user turn text still counts once.
    final = run(
        ev.SessionStarted(0),
        ev.LatencyMeasured(1, 0.7, BREAKDOWN),
        ev.UserTurnText(1.1, "hi"),
        ev.BotTurnText(2, "   "),
        ev.ServiceTTFB(2.1, "llm", "x", None, 0.2),
    )
    assert [t.role for t in final.turns] == ["user"]
    assert [entry.turn for entry in final.latency] == [0]
    assert final.ttfb[0].service == "x" and final.ttfb[0].turn == 1
    assert "will appear here" in render.render_conversation(run(ev.SessionStarted(0)))


def test_errors_are_shown_in_plain_words_and_fatal_ones_change_status():
    soft = run(ev.SessionStarted(0), ev.ErrorReported(1, "Groq refused the key"))
    assert soft.status == "listening"
    assert "Groq refused the key" in render.render_status(soft)
    recovered = run(*one_turn(t0=2), start=soft)
    assert recovered.error is None, "a passing error should clear once the bot speaks again"
    fatal = run(ev.SessionStarted(0), ev.ErrorReported(1, "pipeline died", fatal=True))
    assert fatal.status == "error"
    assert run(ev.SessionStarted(0), ev.SessionEnded(2)).status == "ended"


def test_user_text_is_escaped():
    final = run(ev.SessionStarted(0), ev.UserTurnText(1, "<script>alert(1)</script>"))
    assert "<script>" not in render.render_conversation(final)


def test_charts_hold_one_point_per_turn_labelled_with_the_model():
    final = run(ev.SessionStarted(0), *one_turn(), *one_turn(t0=5, v2v=1.1))
    bars = charts.breakdown_figure(final).to_plotly_json()["data"]
    assert {bar["name"] for bar in bars} == {label for label, _ in BREAKDOWN}
    assert all(list(bar["x"]) == ["1", "2"] for bar in bars)
    lines = charts.ttfb_figure(final).to_plotly_json()["data"]
    assert [line["name"] for line in lines] == ["STT: Whisper", "LLM: SmolLM2", "TTS: Piper"]
    assert all(list(line["x"]) == [1, 2] for line in lines)


def test_fifty_turn_session_keeps_what_is_sent_bounded():
    events = [ev.SessionStarted(0)]
    for i in range(120):
        events += one_turn(t0=i * 5, user=f"question {i}", bot=f"answer {i}", v2v=0.5 + i / 1000)
    final = run(*events)
    assert len(final.turns) == 240 and final.user_turns == 120
    html = render.render_conversation(final)
    assert "answer 119" in html and "question 0<" not in html
    assert f"{240 - render.VISIBLE_TURNS} earlier turns" in html
    bars = charts.breakdown_figure(final).to_plotly_json()["data"]
    assert len(bars[0]["x"]) == state.CHART_TURNS
    lines = charts.ttfb_figure(final).to_plotly_json()["data"]
    assert all(len(line["x"]) == state.CHART_TURNS for line in lines)
    # The headline figures still cover the whole session.
    assert "turns</div>" in render.render_stats(final) and ">120<" in render.render_stats(final)


def test_exported_session_replays_into_the_same_dashboard(tmp_path):
    events = [ev.SessionStarted(0), *one_turn(), *one_turn(t0=5, bot="Second answer.")]
    live = run(*events)
    path = export.write_export(events, tmp_path)
    data = json.loads(path.read_text())
    assert [t["text"] for t in data["transcript"]][-1] == "Second answer."
    assert len(data["events"]) == len(events) and data["metrics"]["voice_to_voice"]
    replayed = export.replay(data)
    assert replayed == live
    assert render.render_stats(replayed) == render.render_stats(live)
    assert charts.breakdown_figure(replayed) == charts.breakdown_figure(live)


def test_turns_are_labelled_with_their_providers_and_compared_by_setup():
    local = ev.ProvidersChanged(0, "Local whisper-tiny.en", "Local SmolLM2", "Local piper")
    cloud = ev.ProvidersChanged(9, "Groq whisper-large-v3-turbo", "Groq llama", "ElevenLabs flash")
    final = run(ev.SessionStarted(0), local, *one_turn(v2v=1.2), cloud, *one_turn(t0=10, v2v=0.5))
    users = [t for t in final.turns if t.role == "user"]
    assert users[0].providers.stt == "Local whisper-tiny.en"
    assert users[1].providers.llm == "Groq llama"
    assert [entry.providers.short for entry in final.latency] == [
        "Local·Local·Local",
        "Groq·Groq·ElevenLabs",
    ]
    html = render.render_stats(final)
    assert "by-setup" in html and "Groq whisper-large-v3-turbo" in html and "500 ms" in html
    ticks = charts.breakdown_figure(final).to_plotly_json()["data"][0]["x"]
    assert "Groq·Groq·ElevenLabs" in ticks[1]
    assert "Groq llama" in render.render_conversation(final)


def test_word_timestamps_move_the_highlight_word_by_word():
    words = ["Paris", "is", "mild", "today."]
    events = [ev.SessionStarted(0), ev.BotThinking(1), ev.BotToken(1, "Paris is mild today.")]
    events += [ev.BotWordStarted(2 + i / 4, w) for i, w in enumerate(words)]
    seen = []
    current = state.initial_state()
    for event in events:
        current = state.reduce(current, event)
        if isinstance(event, ev.BotWordStarted):
            seen.append((current.bot.spoken, current.bot.speaking))
    assert seen[0] == ("", "Paris")
    assert seen[2] == ("Paris is", "mild")
    assert "<mark" in render.render_conversation(current)


def test_the_status_line_counts_down_the_servers_keys():
    events = [ev.SessionStarted(0.0), ev.ServerKeyTime(1.0, 42.4, 90)]
    running = fold(state.reduce, events, state.initial_state())
    assert "42 s left on the server's API keys" in render.render_status(running)
    spent = state.reduce(running, ev.ServerKeyTime(2.0, 0.0, 90))
    assert "used up" in render.render_status(spent)
    assert "server's API keys" not in render.render_status(state.initial_state())
