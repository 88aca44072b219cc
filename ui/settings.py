"""The settings panel: a provider and model (and voice) per stage, API keys, latency knobs.

Every control feeds one per-visitor ``gr.State`` holding a :class:`PageSettings`
(each edit makes a new one); that state is the stream's only extra input, so
the session receives one coherent settings change per edit (and a key only
once it has been typed out: key fields report on blur or Enter, not per
keystroke). The settings live on the server, in this visitor's Gradio session
only: a typed key is never sent to another visitor, rendered back to the page,
logged or exported (nor shown by the settings' ``repr``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any

import gradio as gr

from pipeline.config import SessionConfig
from pipeline.providers.base import STAGES, Catalog, Provider, Stage
from pipeline.providers.registry import (
    PROVIDERS,
    capabilities,
    choice_for,
    keys_from_environment,
    providers_for,
)
from pipeline.server_settings import ServerSettings
from pipeline.tools.catalog import schemas as tool_schemas

log = logging.getLogger(__name__)

CATALOG_TIMEOUT_SECS = 4.0
# The local LLM evaluates the system prompt under a lock every session shares:
# an unbounded one would let a visitor stall everybody's local replies.
MAX_SYSTEM_PROMPT_CHARS = 1000
VAD_STOP_RANGE = (0.1, 1.0)
MAX_KEY_CHARS = 256
STAGE_TITLES = {"stt": "Speech-to-text", "llm": "LLM", "tts": "Text-to-speech"}


@dataclass(frozen=True)
class StagePick:
    """One stage as the page picked it: a provider id, its model and (TTS) voice (None: default)."""

    provider: str
    model: str | None = None
    voice: str | None = None


@dataclass(frozen=True, kw_only=True)
class PageSettings:
    """What the settings panel holds for one visitor; each edit makes a new one.

    Stored as the page sent them and checked only by :func:`config_from_settings`
    (which refuses or clamps what it must). ``keys`` are the ones the visitor
    typed, as (provider id, key) pairs: never shown by ``repr``.
    """

    keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    stt: StagePick
    llm: StagePick
    tts: StagePick
    vad_stop_secs: float
    smart_turn: bool
    speculative: bool
    system_prompt: str
    tools: bool

    def pick(self, stage: Stage) -> StagePick:
        return {"stt": self.stt, "llm": self.llm, "tts": self.tts}[stage]

    def typed_keys(self) -> dict[str, str]:
        """The keys the visitor typed, by provider id ("" where they cleared one)."""
        return dict(self.keys)

    def with_pick(self, stage: Stage, pick: StagePick) -> PageSettings:
        picks = {"stt": self.stt, "llm": self.llm, "tts": self.tts, stage: pick}
        return replace(self, stt=picks["stt"], llm=picks["llm"], tts=picks["tts"])

    def with_knob(self, name: str, value: Any) -> PageSettings:
        """These settings with one knob (VAD stop, a toggle, the prompt) as the page sent it."""
        if name not in KNOBS:
            raise ValueError(f"not a knob: {name}")
        return replace(self, **{name: value})

    def with_key(self, provider_id: str, key: str) -> PageSettings:
        keys = {**self.typed_keys(), provider_id: key}
        return replace(self, keys=tuple(keys.items()))

    def __hash__(self) -> int:
        # Gradio's State tells an edit by this hash (``gradio.utils.deep_hash``): the
        # stream hears of a change only when it differs, so it is by content. A
        # checkbox or a free-text dropdown passes on whatever JSON a page sends (a
        # list, say), kept as it was sent: hashed then by its ``repr`` and the keys.
        try:
            return hash(tuple(getattr(self, f.name) for f in fields(self)))
        except TypeError:
            return hash((self.keys, repr(self)))


KNOBS = ("vad_stop_secs", "smart_turn", "speculative", "system_prompt", "tools")


def initial_settings(server: ServerSettings | None = None) -> PageSettings:
    """What a new visitor starts with: the server's session defaults.

    ``server``: the settings the app read at start (None: what the environment sets).
    """
    config = SessionConfig.from_server(server or ServerSettings.from_environ())
    picks = {
        stage: StagePick(choice.provider, choice.model, choice.voice)
        for stage, choice in config.choices().items()
    }
    return PageSettings(
        stt=picks["stt"],
        llm=picks["llm"],
        tts=picks["tts"],
        vad_stop_secs=config.vad_stop_secs,
        smart_turn=config.smart_turn,
        speculative=config.speculative,
        system_prompt=config.system_prompt,
        tools=config.tools,
    )


def config_from_settings(
    settings: PageSettings, server: ServerSettings | None = None
) -> SessionConfig:
    """The page's settings as a session config; raises ValueError with a readable reason.

    ``server``: the settings the app read at start (None: what the environment sets).
    """
    server = server or ServerSettings.from_environ()
    keys = keys_from_environment().with_overrides(settings.typed_keys())
    choices = {}
    for stage in STAGES:
        picked = settings.pick(stage)
        provider = picked.provider
        if provider not in PROVIDERS or stage not in PROVIDERS[provider].stages:
            raise ValueError(f"Unknown {STAGE_TITLES[stage]} provider: {provider!r}")
        choices[stage] = choice_for(provider, stage, picked.model, picked.voice)
    config = SessionConfig.from_server(
        server, keys=keys, stt=choices["stt"], llm=choices["llm"], tts=choices["tts"]
    )
    prompt = settings.system_prompt or ""
    if not isinstance(prompt, str):
        raise ValueError("The system prompt must be text.")
    if len(prompt) > MAX_SYSTEM_PROMPT_CHARS:
        raise ValueError(
            f"The system prompt is {len(prompt):,} characters long; "
            f"at most {MAX_SYSTEM_PROMPT_CHARS:,} are allowed. Your previous prompt stays."
        )
    try:
        vad_stop = float(settings.vad_stop_secs)
    except (TypeError, ValueError):
        raise ValueError("VAD stop must be a number of seconds.") from None
    low, high = VAD_STOP_RANGE
    return replace(
        config,
        vad_stop_secs=min(max(vad_stop, low), high) if vad_stop == vad_stop else low,
        smart_turn=bool(settings.smart_turn),
        speculative=bool(settings.speculative),
        system_prompt=prompt.strip() or config.system_prompt,
        tools=server.tools and bool(settings.tools),
    )


async def catalog(provider_id: str, stage: Stage, typed_keys: dict) -> Catalog:
    """The provider's live model/voice list for this visitor's key, else its built-in list."""
    provider = PROVIDERS[provider_id]
    built_in = provider.catalogs[stage]
    key = keys_from_environment().with_overrides(typed_keys).get(provider_id)
    if provider.fetch_catalogs is None or not key:
        return built_in
    try:
        live = await asyncio.wait_for(provider.fetch_catalogs(key), CATALOG_TIMEOUT_SECS)
    except Exception as e:  # any failure means "use the built-in list"
        log.info(
            "%s model list unavailable (%s): using the built-in list",
            provider.label,
            type(e).__name__,
        )
        return built_in
    return live.get(stage) or built_in


def _provider_label(provider: Provider, stage: Stage) -> str:
    if provider.unavailable(stage):
        return f"{provider.label} (unavailable here)"
    return provider.label


def _key_status(provider_id: str, typed: dict) -> str:
    provider = PROVIDERS[provider_id]
    if typed.get(provider_id):
        return f"{provider.label}: your key (this session only)"
    if keys_from_environment().get(provider_id):
        return f"{provider.label}: the server's key"
    return f"{provider.label}: no key"


def _tools_control(settings: PageSettings, llm_provider: str, allowed: bool) -> dict:
    """The tools toggle for this LLM: usable only if it calls tools (the registry says).

    ``allowed``: whether this server offers tools at all (``VOICE_LAB_TOOLS``).
    """
    if llm_provider not in PROVIDERS or "llm" not in PROVIDERS[llm_provider].stages:
        llm_provider = settings.llm.provider
    choice = choice_for(llm_provider, "llm")
    can_call = capabilities("llm", choice).tools
    if not allowed:
        info = "Turned off on this server (VOICE_LAB_TOOLS=0)."
    elif not can_call:
        info = (
            f"{PROVIDERS[llm_provider].label} {choice.model} cannot call tools: none are offered."
        )
    else:
        info = "Look up an order (try 1234 or 4821), cancel one not shipped, or ask a city's time."
    return {
        "value": bool(settings.tools) and can_call and allowed,
        "interactive": can_call and allowed,
        "label": "Tools",
        "info": info,
        "elem_id": "tools-toggle",
    }


@dataclass
class StagePicker:
    """A stage's provider and model dropdowns (and the TTS voice where asked for)."""

    stage: Stage
    provider: gr.Dropdown
    model: gr.Dropdown
    voice: gr.Dropdown | None = None


def build_stage_picker(
    stage: Stage,
    provider_id: str,
    model: str | None,
    *,
    voice: str | None = None,
    with_voice: bool = False,
    id_prefix: str = "",
) -> StagePicker:
    """One stage's dropdowns, in the current Blocks context (the settings and A/B panels)."""
    catalog_ = PROVIDERS[provider_id].catalogs[stage]
    provider = gr.Dropdown(
        [(_provider_label(p, stage), p.id) for p in providers_for(stage)],
        value=provider_id,
        label=f"{STAGE_TITLES[stage]} provider",
        elem_id=f"{id_prefix}{stage}-provider",
    )
    model_picker = gr.Dropdown(
        list(catalog_.models),
        value=model,
        label="Model",
        allow_custom_value=True,
        elem_id=f"{id_prefix}{stage}-model",
    )
    voice_picker = None
    if with_voice:
        voice_picker = gr.Dropdown(
            [(label, voice_id) for label, voice_id in catalog_.voices],
            value=voice,
            label="Voice",
            allow_custom_value=True,
            elem_id=f"{id_prefix}{stage}-voice",
        )
    return StagePicker(stage, provider, model_picker, voice_picker)


@dataclass
class SettingsPanel:
    """The panel's controls; :func:`wire_settings_panel` connects them to ``settings``."""

    settings: gr.State
    pickers: dict[Stage, StagePicker]
    key_boxes: dict[str, gr.Textbox]
    key_status: gr.Markdown
    vad_stop: gr.Slider
    smart_turn: gr.Checkbox
    speculative: gr.Checkbox
    tools: gr.Checkbox
    system_prompt: gr.Textbox
    # Whether this server offers tools at all: the toggle is usable only then.
    tools_allowed: bool


def build_settings_panel(server: ServerSettings) -> gr.State:
    """Lay out and wire the panel inside the current Blocks context; returns the settings state."""
    panel = lay_out_settings_panel(server)
    wire_settings_panel(panel)
    return panel.settings


def lay_out_settings_panel(server: ServerSettings) -> SettingsPanel:
    """The panel's controls, in the current Blocks context, showing the server's defaults."""
    start = initial_settings(server)
    settings = gr.State(start)
    with gr.Accordion("Providers and settings", open=True, elem_id="settings"):
        gr.Markdown(
            "Changes apply from your next turn, without reconnecting; the conversation "
            "carries on. Each turn on the dashboard is labelled with what it ran on.",
            elem_classes=["settings-hint"],
        )
        pickers: dict[Stage, StagePicker] = {}
        for stage in STAGES:
            current = start.pick(stage)
            with gr.Row():
                pickers[stage] = build_stage_picker(
                    stage,
                    current.provider,
                    current.model,
                    voice=current.voice,
                    with_voice=stage == "tts",
                )

        with gr.Row():
            key_boxes = {
                p.id: gr.Textbox(
                    label=f"{p.label} API key",
                    type="password",
                    placeholder=f"{p.key_env} (optional)",
                    elem_id=f"{p.id}-key",
                )
                for p in _cloud_providers()
            }
        key_status = gr.Markdown(
            " · ".join(_key_status(p.id, {}) for p in _cloud_providers()),
            elem_classes=["settings-hint"],
        )
        # The knobs: one per full-width row, a short label with its explanation
        # under it (``info``), so labels read on one line at any width. A new
        # knob is one more component in this column.
        with gr.Column(elem_id="settings-knobs", elem_classes=["knobs"]):
            vad_stop = gr.Slider(
                0.1,
                1.0,
                value=start.vad_stop_secs,
                step=0.05,
                label="VAD stop (s)",
                info="Silence before the turn is judged",
                elem_id="vad-stop",
            )
            smart_turn = gr.Checkbox(
                value=start.smart_turn,
                label="Smart Turn",
                info="Judge whether you finished; off: end on silence alone",
                elem_id="smart-turn",
            )
            speculative = gr.Checkbox(
                value=start.speculative,
                label="Speculative turns",
                info="Answer while Smart Turn decides; dropped if you go on",
                elem_id="speculative",
            )
            tools = gr.Checkbox(**_tools_control(start, start.llm.provider, server.tools))
            with gr.Accordion("Tool schemas: what the LLM is told", open=False):
                gr.JSON(tool_schemas(), show_label=False, elem_id="tool-schemas")
        system_prompt = gr.Textbox(
            value=start.system_prompt,
            label="System prompt",
            lines=2,
            max_lines=6,
            max_length=MAX_SYSTEM_PROMPT_CHARS,
        )
    return SettingsPanel(
        settings,
        pickers,
        key_boxes,
        key_status,
        vad_stop,
        smart_turn,
        speculative,
        tools,
        system_prompt,
        server.tools,
    )


def _cloud_providers() -> list[Provider]:
    return [p for p in PROVIDERS.values() if p.needs_key]


def wire_settings_panel(panel: SettingsPanel) -> None:
    """Every control feeds the visitor's settings state; key fields refresh the lists."""
    settings, pickers = panel.settings, panel.pickers
    for picker in pickers.values():
        _wire_stage(picker.stage, picker.provider, picker.model, picker.voice, settings)

    def set_knob(name):
        def update(settings: PageSettings, value) -> PageSettings:
            return settings.with_knob(name, value)

        return update

    vad_stop, smart_turn, speculative = panel.vad_stop, panel.smart_turn, panel.speculative
    tools, system_prompt = panel.tools, panel.system_prompt
    vad_stop.release(set_knob("vad_stop_secs"), [settings, vad_stop], settings, queue=False)
    smart_turn.change(set_knob("smart_turn"), [settings, smart_turn], settings, queue=False)
    speculative.change(set_knob("speculative"), [settings, speculative], settings, queue=False)
    # ``input``: only the visitor's clicks are a preference, not the updates below.
    tools.input(set_knob("tools"), [settings, tools], settings, queue=False)
    pickers["llm"].provider.input(
        lambda current, provider_id: gr.update(
            **_tools_control(current, provider_id, panel.tools_allowed)
        ),
        [settings, pickers["llm"].provider],
        tools,
        queue=False,
    )
    system_prompt.blur(set_knob("system_prompt"), [settings, system_prompt], settings, queue=False)
    system_prompt.submit(
        set_knob("system_prompt"), [settings, system_prompt], settings, queue=False
    )

    cloud = _cloud_providers()
    for provider_id, box in panel.key_boxes.items():

        async def set_key(current: PageSettings, key: str, provider_id=provider_id):
            key = key.strip()[:MAX_KEY_CHARS] if isinstance(key, str) else ""
            current = current.with_key(provider_id, key)
            keys = current.typed_keys()
            updates = [current, " · ".join(_key_status(p.id, keys) for p in cloud)]
            # A new key may unlock the provider's own model and voice lists
            # (an ElevenLabs account has voices of its own).
            for stage in STAGES:
                found = None
                if current.pick(stage).provider == provider_id:
                    found = await catalog(provider_id, stage, keys)
                updates.append(gr.update(choices=list(found.models)) if found else gr.update())
                if stage == "tts":
                    voices = [tuple(v) for v in found.voices] if found else None
                    updates.append(gr.update(choices=voices) if voices else gr.update())
            return updates

        # In the order ``set_key`` answers: each stage's model, then the TTS voice.
        tts_voice = pickers["tts"].voice
        assert tts_voice is not None, "the TTS row has a voice picker"
        lists = [pickers["stt"].model, pickers["llm"].model, pickers["tts"].model, tts_voice]
        outputs = [settings, panel.key_status, *lists]
        box.blur(set_key, [settings, box], outputs)
        box.submit(set_key, [settings, box], outputs)


def _wire_stage(
    stage: Stage,
    provider: gr.Dropdown,
    model: gr.Dropdown,
    voice: gr.Dropdown | None,
    settings: gr.State,
) -> None:
    async def on_provider(settings: PageSettings, provider_id: str):
        if provider_id not in PROVIDERS or stage not in PROVIDERS[provider_id].stages:
            return [settings, gr.update(), *([gr.update()] if voice is not None else [])]
        found = await catalog(provider_id, stage, settings.typed_keys())
        picked = StagePick(provider_id, found.default_model)
        updates = [gr.update(choices=list(found.models), value=found.default_model)]
        if voice is not None:
            picked = replace(picked, voice=found.default_voice)
            updates.append(gr.update(choices=[tuple(v) for v in found.voices], value=picked.voice))
        return [settings.with_pick(stage, picked), *updates]

    def on_pick(field: str):
        def update(settings: PageSettings, value: str) -> PageSettings:
            if not value:
                return settings
            return settings.with_pick(stage, replace(settings.pick(stage), **{field: value}))

        return update

    outputs = [settings, model, *([voice] if voice is not None else [])]
    provider.input(on_provider, [settings, provider], outputs)
    model.input(on_pick("model"), [settings, model], settings, queue=False)
    if voice is not None:
        voice.input(on_pick("voice"), [settings, voice], settings, queue=False)
