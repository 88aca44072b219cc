"""Cost: the price table, cost_of on any stack, and the live #cost panel from scripted events."""

from __future__ import annotations

import re
from functools import reduce as fold
from pathlib import Path

import pytest

from pipeline import events as ev
from pipeline import pricing
from pipeline.pricing import Usage, cost_of
from tests.test_timeline import T0, spoken_turn
from ui import cost, state

CLOUD = {
    "stt": "Groq whisper-large-v3-turbo",
    "llm": "Groq llama-3.1-8b-instant",
    "tts": "ElevenLabs eleven_flash_v2_5",
}
LOCAL = {
    "stt": "Local whisper-tiny.en",
    "llm": "Local SmolLM2-135M-Instruct",
    "tts": "Local piper-joe-medium",
}
ENV_EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def test_a_cloud_stack_is_priced_per_token_character_and_second():
    usage = Usage(
        llm_input_tokens=1_000_000,
        llm_output_tokens=1_000_000,
        tts_characters=1_000,
        stt_audio_secs=3600,
    )
    # $0.05 + $0.08 per million tokens, $50 per million characters, $0.04 an hour.
    assert cost_of(usage, CLOUD) == pytest.approx(0.05 + 0.08 + 0.05 + 0.04)
    assert cost_of(usage, LOCAL) == 0.0
    assert cost_of(Usage(), CLOUD) == 0.0


def test_groq_bills_each_transcription_as_at_least_ten_seconds():
    # Two questions (1.3 s and 2.2 s) and a 14 s monologue, one request each.
    requests = Usage(stt_audio_secs=1.3) + Usage(stt_audio_secs=2.2) + Usage(stt_audio_secs=14)
    assert requests.stt_audio_secs == pytest.approx(17.5)
    assert requests.stt_requests == (1.3, 2.2, 14)
    # Billed as 10 + 10 + 14 s at $0.04 an hour, not as the 17.5 s heard.
    assert cost_of(requests, CLOUD) == pytest.approx(34 / 3600 * 0.04)
    large = {**CLOUD, "stt": "Groq whisper-large-v3"}
    assert cost_of(Usage(stt_audio_secs=0.4), large) == pytest.approx(10 / 3600 * 0.111)


def test_streamed_speech_to_text_is_billed_by_the_second_with_no_minimum():
    streamed = {**CLOUD, "stt": "ElevenLabs scribe_v2_realtime"}
    requests = Usage(stt_audio_secs=1.3) + Usage(stt_audio_secs=2.2)
    assert cost_of(requests, streamed) == pytest.approx(3.5 / 3600 * 0.39)


def test_tokens_and_characters_have_no_minimum_per_request():
    one_word = Usage(llm_input_tokens=1, llm_output_tokens=1, tts_characters=3)
    assert cost_of(one_word, CLOUD) == pytest.approx((0.05 + 0.08 + 3 * 50) / 1e6)


def test_every_price_says_how_its_provider_bills():
    for price in pricing.PRICES:
        assert price.billing, price
        # A least amount per request is stated with it ("at least 10 s"), never implied.
        assert (price.minimum > 0) == ("at least" in price.billing), price
    whisper = pricing.price_of(CLOUD["stt"], "stt_audio_secs")
    assert (
        whisper.minimum == 10 and whisper.source == "https://console.groq.com/docs/speech-to-text"
    )


def test_each_stage_is_billed_by_its_own_provider():
    mixed = {**LOCAL, "tts": "ElevenLabs eleven_multilingual_v2"}
    assert cost_of(Usage(llm_input_tokens=10**6, tts_characters=10**4), mixed) == pytest.approx(1.0)


def test_an_environment_variable_overrides_a_price(monkeypatch):
    price = pricing.price_of(CLOUD["llm"], "llm_input_tokens")
    monkeypatch.setenv(price.env, "2.5")
    assert cost_of(Usage(llm_input_tokens=10**6), CLOUD) == pytest.approx(2.5)
    monkeypatch.setenv(price.env, "free")  # not a number: the table's price stands
    assert cost_of(Usage(llm_input_tokens=10**6), CLOUD) == pytest.approx(0.05)


def test_every_price_names_its_source_and_date_and_is_documented():
    documented = ENV_EXAMPLE.read_text()
    for price in pricing.PRICES:
        assert price.source.startswith("https://"), price
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", price.read_on), price
        assert f"# {price.env}={price.usd:g}\n" in documented, f"{price.env} not in .env.example"


def test_a_model_without_a_price_is_named_not_guessed():
    stack = {**CLOUD, "llm": "Groq some-new-model"}
    assert pricing.unpriced(stack) == ["Groq some-new-model"]
    assert pricing.unpriced(CLOUD) == [] and pricing.unpriced(LOCAL) == []
    assert cost_of(Usage(llm_input_tokens=10**6), stack) == 0.0


def cloud_session(*events: ev.Event) -> state.SessionState:
    start = [ev.SessionStarted(T0 - 1), ev.ProvidersChanged(T0 - 1, *CLOUD.values())]
    return fold(state.reduce, [*start, *events], state.initial_state())


def test_the_panel_shows_dollars_per_turn_and_per_minute_on_a_cloud_stack():
    current = cloud_session(*spoken_turn(T0), *spoken_turn(T0 + 30))
    html = cost.render_cost(current)
    per_turn = Usage(
        llm_input_tokens=60, llm_output_tokens=5, tts_characters=15, stt_audio_secs=1.3
    )
    expected_turn = cost_of(per_turn, CLOUD)
    assert cost.turn_cost(current, 2) == pytest.approx(expected_turn)
    assert cost.session_cost(current) == pytest.approx(2 * expected_turn)
    minutes = (T0 + 30 + 3.8 - (T0 - 1)) / 60
    assert pricing.format_usd(2 * expected_turn / minutes) in html  # per minute of conversation
    assert pricing.format_usd(expected_turn) in html  # this turn
    assert "Priced on Groq whisper-large-v3-turbo" in html
    # Two 1.3 s questions, billed by Groq as 10 s each.
    assert "2.6 s of STT audio (billed as 20 s: " in html
    assert expected_turn == pytest.approx((60 * 0.05 + 5 * 0.08 + 15 * 50) / 1e6 + 10 / 3600 * 0.04)


def test_a_local_stack_costs_nothing_but_shows_what_the_cloud_would_cost():
    start = [ev.SessionStarted(T0 - 1), ev.ProvidersChanged(T0 - 1, *LOCAL.values())]
    current = fold(state.reduce, [*start, *spoken_turn()], state.initial_state())
    html = cost.render_cost(current)
    assert cost.session_cost(current) == 0.0
    rows = dict(re.findall(r"<tr><td>([^<]+)</td><td>(\$[0-9.]+)</td>", html))
    assert rows["All local"] == "$0"
    assert float(rows["Groq + ElevenLabs"][1:]) > 0


def test_stt_audio_comes_from_the_users_speech_when_the_stt_reports_none():
    events = [e for e in spoken_turn() if not (e.kind == "UsageAmount" and "stt" in e.measure)]
    current = cloud_session(*events)
    (spend,) = current.turn_logs.spend
    assert spend.usage.stt_audio_secs == 0 and spend.speech_secs == pytest.approx(1.1)
    assert cost.session_usage(current).stt_audio_secs == pytest.approx(1.1)


def test_usage_before_any_turn_still_counts_for_the_session():
    current = cloud_session(ev.UsageAmount(T0, "tts_characters", 1000))
    assert cost.session_cost(current) == pytest.approx(0.05)


def test_small_amounts_keep_two_significant_figures():
    assert pricing.format_usd(0.0000031) == "$0.0000031"
    assert pricing.format_usd(0.042) == "$0.042"
    assert pricing.format_usd(0.5) == "$0.50"
    assert pricing.format_usd(1.2) == "$1.20"
    assert pricing.format_usd(0) == "$0"
