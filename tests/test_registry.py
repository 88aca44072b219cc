"""The provider registry: defaults, the offline fallback and capabilities, as declared.

Nothing outside the provider modules names a provider, so a provider added to
the registry is picked up by the defaults, the settings panel and the test
environment from its entry alone: these tests register a made-up one and look.
"""

from __future__ import annotations

import dataclasses

import gradio as gr
import pytest

from pipeline.config import SessionConfig
from pipeline.providers.base import Capabilities, Catalog, Provider, ProviderKeys
from pipeline.providers.local.models import shared_models
from pipeline.providers.registry import (
    PROVIDERS,
    capabilities,
    check,
    default_choice,
    keys_from_environment,
    offline_provider,
)
from pipeline.server_settings import ServerSettings
from testkit.env import provider_variables
from ui.settings import (
    StagePick,
    build_settings_panel,
    catalog,
    config_from_settings,
    initial_settings,
)

# What each provider's service for each stage can do. A provider or stage added to the
# registry fails here until its capabilities are written down, checked against its service.
DECLARED = {
    ("local", "stt"): Capabilities(interim_text=True),  # re-transcribes the growing utterance
    ("local", "llm"): Capabilities(),  # SmolLM2-135M: no tool calling
    ("local", "tts"): Capabilities(),  # Piper: whole sentences
    ("groq", "stt"): Capabilities(),  # segmented Whisper: one transcript at the end
    ("groq", "llm"): Capabilities(tools=True),
    ("groq", "tts"): Capabilities(),  # Orpheus: audio without timings
    ("elevenlabs", "stt"): Capabilities(interim_text=True, streaming=True),  # Scribe realtime
    ("elevenlabs", "tts"): Capabilities(word_timing=True, streamed_text=True),  # websocket
}


def _never_built(*_args):
    raise AssertionError("not built in these tests")


ACME = Provider(
    id="acme",
    label="Acme",
    key_env="ACME_API_KEY",
    base_url_env="ACME_BASE_URL",
    catalogs={"tts": Catalog(("acme-fast", "acme-fine"), voices=(("Ann", "ann"), ("Bo", "bo")))},
    factories={"tts": _never_built},
    capabilities={"tts": Capabilities(word_timing=True)},
    default_rank={"tts": 0},
)


@pytest.fixture
def acme(monkeypatch) -> Provider:
    monkeypatch.setitem(PROVIDERS, ACME.id, ACME)
    return ACME


def test_each_stage_declares_what_its_service_can_do():
    declared = {(p.id, s): p.capabilities_of(s) for p in PROVIDERS.values() for s in p.stages}
    assert declared == DECLARED
    config = SessionConfig()
    for stage, choice in config.choices().items():
        assert capabilities(stage, choice) == DECLARED[(choice.provider, stage)]


def test_a_capability_on_the_wrong_stage_is_refused():
    with pytest.raises(ValueError, match="interim_text"):
        dataclasses.replace(ACME, capabilities={"tts": Capabilities(interim_text=True)})
    with pytest.raises(ValueError, match="on stt"):
        dataclasses.replace(ACME, capabilities={"stt": Capabilities()})
    with pytest.raises(ValueError, match="default rank"):
        dataclasses.replace(ACME, default_rank={"llm": 1})
    with pytest.raises(ValueError, match="needs no key"):
        dataclasses.replace(ACME, offline=True)


def test_there_is_exactly_one_offline_provider_and_it_runs_every_stage():
    local = offline_provider()
    assert not local.needs_key and local.stages == ("stt", "llm", "tts")
    check(PROVIDERS.values())
    with pytest.raises(ValueError):
        check([p for p in PROVIDERS.values() if not p.offline])
    with pytest.raises(ValueError):
        check([*PROVIDERS.values(), dataclasses.replace(local, id="another")])
    keyless_tts_only = dataclasses.replace(ACME, key_env=None, offline=True)
    with pytest.raises(ValueError):
        check([keyless_tts_only])


def test_defaults_follow_the_declared_ranks_among_providers_with_a_key():
    assert default_choice("tts", ProviderKeys()).provider == offline_provider().id
    both = ProviderKeys({"groq": "gsk_x", "elevenlabs": "el_x"})
    assert [default_choice(s, both).provider for s in ("stt", "llm", "tts")] == [
        "groq",
        "groq",
        "elevenlabs",
    ]
    eleven_only = ProviderKeys({"elevenlabs": "el_x"})
    assert default_choice("stt", eleven_only).provider == "elevenlabs"
    assert default_choice("llm", eleven_only).provider == offline_provider().id


def test_a_registered_provider_becomes_the_default_with_its_key(acme, monkeypatch):
    assert SessionConfig().tts.provider == offline_provider().id
    monkeypatch.setenv("ELEVENLABS_API_KEY", "el_server")
    monkeypatch.setenv("ACME_API_KEY", "acme_server")
    assert keys_from_environment().get("acme") == "acme_server"
    config = SessionConfig()
    assert (config.tts.provider, config.tts.model, config.tts.voice) == ("acme", "acme-fast", "ann")
    assert config.tts.label == "Acme acme-fast"
    assert capabilities("tts", config.tts).word_timing
    assert config.stt.provider == "elevenlabs"  # Acme offers no speech-to-text

    monkeypatch.delenv("ACME_API_KEY")
    keyless = SessionConfig(keys=keys_from_environment(), tts=config.tts)
    assert keyless.keyless_stages() == ["tts"]
    assert keyless.with_local_fallback().tts.provider == offline_provider().id


def test_the_settings_panel_offers_a_registered_provider(acme):
    assert {"ACME_API_KEY", "ACME_BASE_URL"} <= set(provider_variables())
    values = initial_settings().with_key("acme", "acme_typed").with_pick("tts", StagePick("acme"))
    config = config_from_settings(values)
    assert (config.tts.provider, config.tts.voice, config.keys.get("acme")) == (
        "acme",
        "ann",
        "acme_typed",
    )
    with pytest.raises(ValueError, match="Speech-to-text provider"):
        config_from_settings(values.with_pick("stt", StagePick("acme", "acme-fast")))

    with gr.Blocks() as page:
        build_settings_panel(ServerSettings())
    by_id = {b.elem_id: b for b in page.blocks.values() if getattr(b, "elem_id", None)}
    assert ("Acme", "acme") in by_id["tts-provider"].choices
    assert all(value != "acme" for _, value in by_id["stt-provider"].choices)
    assert by_id["acme-key"].placeholder == "ACME_API_KEY (optional)"


async def test_a_registered_provider_lists_its_built_in_catalog(acme):
    assert await catalog("acme", "tts", {"acme": "acme_typed"}) == ACME.catalogs["tts"]


def test_a_stage_the_offline_provider_cannot_run_here_is_marked(monkeypatch):
    monkeypatch.setitem(shared_models().unavailable, "llm", "no AVX2")
    with gr.Blocks() as page:
        build_settings_panel(ServerSettings())
    by_id = {b.elem_id: b for b in page.blocks.values() if getattr(b, "elem_id", None)}
    local = offline_provider()
    assert (f"{local.label} (unavailable here)", local.id) in by_id["llm-provider"].choices
    assert (local.label, local.id) in by_id["stt-provider"].choices
