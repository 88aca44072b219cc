"""The settings panel's logic: defaults from keys, typed keys, live model lists, error wording."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time

import pytest
from gradio.utils import deep_hash

from pipeline import events as ev
from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys
from pipeline.providers.errors import describe_failure
from pipeline.providers.registry import PROVIDERS
from testkit.fakes.elevenlabs import FakeElevenLabs
from testkit.fakes.groq import FakeGroq
from ui import render, state
from ui.settings import StagePick, catalog, config_from_settings, initial_settings


def test_every_stage_is_local_without_keys():
    config = SessionConfig()
    assert {c.provider for c in config.choices().values()} == {"local"}


def test_a_server_key_makes_its_provider_the_default(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_server")
    monkeypatch.setenv("ELEVENLABS_API_KEY", "el_server")
    choices = SessionConfig().choices()
    assert (choices["stt"].provider, choices["llm"].provider) == ("groq", "groq")
    assert choices["tts"].provider == "elevenlabs"
    assert choices["tts"].model == "eleven_flash_v2_5"


def test_a_typed_key_overrides_the_servers_for_that_session_only(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_server")
    mine = config_from_settings(initial_settings().with_key("groq", " gsk_mine "))
    theirs = config_from_settings(initial_settings())
    assert mine.keys.get("groq") == "gsk_mine"
    assert theirs.keys.get("groq") == "gsk_server"


def test_knobs_and_models_come_from_the_page():
    assert initial_settings().speculative is True  # on by default
    values = dataclasses.replace(
        initial_settings(),
        vad_stop_secs=0.35,
        smart_turn=False,
        speculative=False,
        system_prompt="Be a pirate.",
        llm=StagePick("groq", "openai/gpt-oss-20b"),
    )
    config = config_from_settings(values)
    assert (config.vad_stop_secs, config.smart_turn, config.speculative) == (0.35, False, False)
    assert config.system_prompt == "Be a pirate."
    assert config.llm.label == "Groq openai/gpt-oss-20b"


def test_an_unknown_provider_is_refused_in_words():
    values = initial_settings().with_pick("tts", StagePick("acme", "x"))
    with pytest.raises(ValueError, match="Text-to-speech provider"):
        config_from_settings(values)


def test_keys_never_print():
    keys = ProviderKeys({"groq": "gsk_secret_value"})
    config = SessionConfig(keys=keys)
    settings = initial_settings().with_key("groq", "gsk_secret_value")
    for text in (repr(keys), str(keys), repr(config), repr(settings), str(settings)):
        assert "gsk_secret_value" not in text
    assert "PageSettings(stt=StagePick(" in repr(settings)
    assert keys.redact("bad key gsk_secret_value") == "bad key ***"


def test_the_page_settings_are_values_that_gradio_can_keep_per_visitor():
    """Frozen, deep-copied per session (gr.State), and told apart by content as the dict was."""
    start = initial_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.smart_turn = False
    assert copy.deepcopy(start) == start and copy.deepcopy(start) is not start
    keyed = start.with_key("groq", "gsk_one")
    assert start.typed_keys() == {} and keyed.typed_keys() == {"groq": "gsk_one"}
    assert keyed.with_key("groq", "").typed_keys() == {"groq": ""}
    # Gradio's State reports a change (and so the stream hears of it) only if this differs.
    assert deep_hash(start) == deep_hash(initial_settings())
    assert deep_hash(start.with_knob("smart_turn", start.smart_turn)) == deep_hash(start)
    for changed in (
        keyed,
        keyed.with_key("groq", "gsk_two"),
        start.with_knob("vad_stop_secs", 0.5),
        start.with_pick("llm", StagePick("groq")),
    ):
        assert deep_hash(changed) != deep_hash(start)
    # A checkbox passes on any JSON a page sends: hashed all the same, read as before.
    odd = start.with_knob("smart_turn", ["x"])
    assert deep_hash(odd) != deep_hash(start)
    assert deep_hash(odd.with_key("groq", "a")) != deep_hash(odd.with_key("groq", "b"))
    assert config_from_settings(odd).smart_turn is True
    with pytest.raises(ValueError, match="not a knob"):
        start.with_knob("keys", ())


async def test_model_lists_come_from_the_provider_with_a_key(monkeypatch):
    async with FakeGroq(
        api_key="gsk_ok", chat_models=["llama-3.1-8b-instant", "qwen/qwen3-32b"]
    ) as groq:
        monkeypatch.setenv("GROQ_BASE_URL", groq.base_url)
        live = await catalog("groq", "llm", {"groq": "gsk_ok"})
        assert "qwen/qwen3-32b" in live.models and live.default_model == "llama-3.1-8b-instant"
        stt = await catalog("groq", "stt", {"groq": "gsk_ok"})
        assert stt.default_model == "whisper-large-v3-turbo"
        # A refused key, or no key: the built-in list, not an error.
        fallback = await catalog("groq", "llm", {"groq": "gsk_wrong"})
        assert "qwen/qwen3-32b" not in fallback.models and fallback.models
        assert (await catalog("groq", "llm", {})).models == fallback.models


async def test_voices_come_from_elevenlabs_with_a_key(monkeypatch):
    async with FakeElevenLabs(api_key="el_ok") as fake:
        monkeypatch.setenv("ELEVENLABS_BASE_URL", fake.base_url)
        monkeypatch.setenv("SSL_CERT_FILE", fake.cert_path)
        live = await catalog("elevenlabs", "tts", {"elevenlabs": "el_ok"})
        assert {v["voice_id"] for v in fake.voices} == {voice_id for _, voice_id in live.voices}
        assert live.default_model == "eleven_flash_v2_5"


async def test_elevenlabs_lists_fall_back_at_once_without_retries_or_a_logged_key(
    monkeypatch, caplog
):
    """The SDK retries a 429 or 5xx twice, with back-off, unless told not to."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "hpack", "fern"):
        caplog.set_level(logging.DEBUG, logger=name)
    async with FakeElevenLabs(api_key="sk_ok_0123456789abcdef") as fake:
        monkeypatch.setenv("ELEVENLABS_BASE_URL", fake.base_url)
        monkeypatch.setenv("SSL_CERT_FILE", fake.cert_path)
        live = await catalog("elevenlabs", "tts", {"elevenlabs": "sk_ok_0123456789abcdef"})
        fake.fail("voices", "429")
        start = time.monotonic()
        limited = await catalog("elevenlabs", "tts", {"elevenlabs": "sk_ok_0123456789abcdef"})
        assert time.monotonic() - start < 1.0
    assert live.voices != limited.voices == PROVIDERS["elevenlabs"].catalogs["tts"].voices
    assert [r["endpoint"] for r in fake.requests] == ["voices", "models", "voices"]
    # Nowhere in any record (message, arguments or extra fields) at DEBUG.
    assert caplog.records and not [r for r in caplog.records if "0123456789abcdef" in repr(vars(r))]


async def test_an_unreachable_provider_still_lists_its_built_in_models(monkeypatch):
    monkeypatch.setenv("ELEVENLABS_BASE_URL", "https://127.0.0.1:9")
    found = await catalog("elevenlabs", "tts", {"elevenlabs": "el_any"})
    assert found.default_model == "eleven_flash_v2_5" and found.voices


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ("Error during completion: Error code: 401 - Invalid API Key", "refused the API key"),
        ("Error: Invalid API key", "refused the API key"),
        ("Unknown error occurred: Error code: 429 - rate limit", "rate-limiting"),
        ("Error during completion: Error code: 503 - over capacity", "server error (503)"),
        ("Error during completion: Request timed out.", "did not answer in time"),
        ("Error during completion: Connection error.", "Could not reach Groq"),
        ("TTS context abc completed with no audio", "sent no audio"),
    ],
)
def test_failures_are_told_in_plain_words(message, words):
    assert words in describe_failure("Groq", None, message)


def test_the_status_line_names_the_providers_in_use():
    shown = state.reduce(
        state.reduce(state.initial_state(), ev.SessionStarted(0)),
        ev.ProvidersChanged(0, "Groq whisper", "Groq llama", "ElevenLabs flash"),
    )
    assert "Groq whisper · Groq llama · ElevenLabs flash" in render.render_status(shown)


def test_hostile_settings_are_refused_in_plain_words():
    """The system prompt is evaluated under a lock every local session shares: bounded."""
    start = initial_settings()
    long_prompt = start.with_knob("system_prompt", "Be brief. " * 200)
    with pytest.raises(ValueError, match="at most 1,000"):
        config_from_settings(long_prompt)
    with pytest.raises(ValueError, match="must be text"):
        config_from_settings(start.with_knob("system_prompt", ["not", "text"]))
    with pytest.raises(ValueError, match="number of seconds"):
        config_from_settings(start.with_knob("vad_stop_secs", "soon"))
    clamped = config_from_settings(start.with_knob("vad_stop_secs", 999))
    assert clamped.vad_stop_secs == 1.0


def test_every_true_false_setting_reads_by_one_rule():
    from pipeline.server_settings import env_flag

    words = [("1", True), ("YES", True), (" on ", True), ("0", False), ("Off", False)]
    for word, expected in words:
        assert env_flag("VOICE_LAB_X", not expected, {"VOICE_LAB_X": word}) is expected
    assert env_flag("VOICE_LAB_X", True, {}) is True and env_flag("VOICE_LAB_X", False, {}) is False
    with pytest.raises(ValueError, match="VOICE_LAB_X='maybe'"):
        env_flag("VOICE_LAB_X", True, {"VOICE_LAB_X": "maybe"})


def test_server_settings_are_typed_and_a_wrong_one_is_named():
    from pipeline.server_settings import ServerSettings, SettingsError

    settings = ServerSettings.from_environ(
        {"VOICE_LAB_MAX_SESSIONS": "10", "VOICE_LAB_ACCESS_LOG": "yes", "SPACE_ID": "me/lab"}
    )
    assert (settings.sessions, settings.per_client, settings.access_log) == (10, 2, True)
    assert settings.server_key_secs == 90.0, "a Space limits its owner's keys by default"
    assert ServerSettings.from_environ({}).server_key_secs == 0.0
    with pytest.raises(SettingsError) as refused:
        ServerSettings.from_environ(
            {
                "VOICE_LAB_MAX_SESSIONS": "many",
                "VOICE_LAB_SPECULATIVE": "maybe",
                "VOICE_LAB_VAD_STOP_SECS": "nan",
                "VOICE_LAB_AGENT_PORT": "70000",
            }
        )
    for name in ("MAX_SESSIONS", "SPECULATIVE", "VAD_STOP_SECS", "AGENT_PORT"):
        assert f"VOICE_LAB_{name}:" in str(refused.value)


def test_a_session_takes_its_defaults_from_the_servers_settings(monkeypatch):
    monkeypatch.setenv("VOICE_LAB_VAD_STOP_SECS", "0.3")
    monkeypatch.setenv("VOICE_LAB_SPECULATIVE", "off")
    config = SessionConfig()
    assert (config.vad_stop_secs, config.speculative) == (0.3, False)


def test_the_page_shows_and_sessions_use_the_settings_the_app_read_at_start(monkeypatch):
    """Read once and handed down: the environment changing later changes nothing."""
    import gradio as gr

    from pipeline.server_keys import ServerKeyBudget, ServerKeyLedger
    from pipeline.server_settings import ServerSettings
    from ui.settings import build_settings_panel

    read = ServerSettings(system_prompt="Answer like a pirate.", vad_stop_secs=0.45, tools=False)
    read = read.model_copy(
        update={"llm_max_tokens": 33, "idle_timeout_secs": 120.0, "server_key_secs": 42.0}
    )
    monkeypatch.setenv("VOICE_LAB_SERVER_KEY_SECS", "7")
    monkeypatch.setenv("VOICE_LAB_SYSTEM_PROMPT", "Not this one.")
    monkeypatch.setenv("VOICE_LAB_LLM_MAX_TOKENS", "5")
    monkeypatch.setenv("VOICE_LAB_TOOLS", "1")

    with gr.Blocks() as page:
        build_settings_panel(read)
    shown = {b.elem_id: b for b in page.blocks.values() if getattr(b, "elem_id", None)}
    prompts = [b for b in page.blocks.values() if getattr(b, "label", None) == "System prompt"]
    assert [b.value for b in prompts] == ["Answer like a pirate."]
    assert shown["vad-stop"].value == 0.45
    assert shown["tools-toggle"].interactive is False

    config = config_from_settings(initial_settings(read).with_knob("tools", True), read)
    assert (config.system_prompt, config.vad_stop_secs) == ("Answer like a pirate.", 0.45)
    assert (config.llm_max_tokens, config.idle_timeout_secs, config.tools) == (33, 120.0, False)
    budget = ServerKeyBudget(lambda _event: None, ledger=ServerKeyLedger.from_settings(read))
    assert budget.budget == 42.0


@pytest.mark.slow
def test_the_app_refuses_to_start_on_a_wrong_setting_and_says_which():
    import subprocess
    import sys

    from testkit.app import ROOT, app_environment, free_port

    env = app_environment(free_port(), extra={"VOICE_LAB_MAX_SESSIONS": "lots"})
    started = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode != 0
    assert "Voice Lab cannot start: VOICE_LAB_MAX_SESSIONS:" in started.stderr
    assert "Traceback" not in started.stderr
