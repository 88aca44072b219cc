"""Providers: a dropdown choice plus a key in, pipecat services out.

Each provider is one module exposing a :class:`Provider`: what it offers per
stage (models, voices, a built-in list used when the live list cannot be
fetched) and how to build the pipecat service for a choice. Adding a provider
means one module and one line in :data:`PROVIDERS`.

Keys never live in module state: they travel inside a session's
:class:`ProviderKeys`, which prints masked.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pipecat.processors.frame_processor import FrameProcessor

from pipeline import redaction

if TYPE_CHECKING:
    from pipeline.config import SessionConfig
    from pipeline.models import LocalModels

Stage = Literal["stt", "llm", "tts"]
STAGES: tuple[Stage, ...] = ("stt", "llm", "tts")


class ProviderKeys:
    """One session's API keys, by provider id. Never printed, logged or exported in clear.

    Every key is handed to :func:`pipeline.redaction.remember` as it arrives
    here (the server's from the environment, a visitor's typed ones), so no
    log line shows it from then on, whoever prints it.
    """

    def __init__(self, keys: dict[str, str] | None = None):
        self._keys = {k: v.strip() for k, v in (keys or {}).items() if v and v.strip()}
        redaction.remember(*self._keys.values())

    def get(self, provider: str) -> str | None:
        return self._keys.get(provider)

    def with_overrides(self, typed: dict[str, str | None]) -> ProviderKeys:
        """These keys, with the ones a visitor typed in taking precedence."""
        merged = dict(self._keys)
        merged.update({k: v.strip() for k, v in typed.items() if v and v.strip()})
        return ProviderKeys(merged)

    def redact(self, text: str) -> str:
        """``text`` with any of these keys blanked out (a provider may echo one in an error)."""
        for key in self._keys.values():
            text = text.replace(key, "***")
        return text

    def __repr__(self) -> str:
        return f"ProviderKeys({', '.join(f'{k}=***' for k in sorted(self._keys))})"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, ProviderKeys) and self._keys == other._keys

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._keys)))


def keys_from_environment() -> ProviderKeys:
    """The server's own keys (a Space's secrets), shared by visitors who type none."""
    return ProviderKeys(
        {p.id: os.environ.get(p.key_env, "") for p in PROVIDERS.values() if p.key_env}
    )


@dataclass(frozen=True)
class StageChoice:
    """What a session uses for one stage: provider id, model, and (TTS) voice."""

    provider: str
    model: str
    voice: str | None = None

    @property
    def label(self) -> str:
        """Short, human label for the dashboard: "Groq llama-3.1-8b-instant"."""
        provider = PROVIDERS[self.provider]
        return f"{provider.label} {self.model}"


@dataclass(frozen=True)
class Catalog:
    """What a provider offers for one stage: model ids and voices as (label, id) pairs."""

    models: tuple[str, ...]
    voices: tuple[tuple[str, str], ...] = ()

    @property
    def default_model(self) -> str:
        return self.models[0]

    @property
    def default_voice(self) -> str | None:
        return self.voices[0][1] if self.voices else None


ServiceFactory = Callable[
    ["StageChoice", "str | None", "SessionConfig", "LocalModels"], FrameProcessor
]
CatalogFetcher = Callable[[str], Awaitable[dict[Stage, Catalog]]]


@dataclass(frozen=True)
class Provider:
    id: str
    label: str
    # The environment variable holding the server's key (None: needs no key).
    key_env: str | None
    catalogs: dict[Stage, Catalog]
    factories: dict[Stage, ServiceFactory]
    # Fetches the live model and voice lists with a key (falls back to ``catalogs``).
    fetch_catalogs: CatalogFetcher | None = None
    # The environment variable that points its clients at another server (a proxy, a
    # gateway, the test fakes); None: it has no server.
    base_url_env: str | None = None
    # Its TTS reports when each word starts playing (else only whole sentences).
    word_timing: bool = False
    stages: tuple[Stage, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(s for s in STAGES if s in self.factories))

    @property
    def needs_key(self) -> bool:
        return self.key_env is not None

    def build(
        self, stage: Stage, choice: StageChoice, keys: ProviderKeys, config, models
    ) -> FrameProcessor:
        key = keys.get(self.id)
        if self.needs_key and not key:
            raise MissingKeyError(
                f"{self.label} needs an API key: set {self.key_env} or type one in."
            )
        return self.factories[stage](choice, key, config, models)


class MissingKeyError(ValueError):
    """A cloud provider was chosen without a key."""


def _registry() -> dict[str, Provider]:
    from pipeline.providers import elevenlabs, groq, local

    return {p.id: p for p in (local.PROVIDER, groq.PROVIDER, elevenlabs.PROVIDER)}


PROVIDERS: dict[str, Provider] = _registry()


def providers_for(stage: Stage) -> list[Provider]:
    return [p for p in PROVIDERS.values() if stage in p.stages]


# Which cloud provider a stage defaults to when several have keys: the fastest
# path for a voice agent (Groq's Whisper and LLM; ElevenLabs Flash with word timing).
CLOUD_PREFERENCE: dict[Stage, tuple[str, ...]] = {
    "stt": ("groq", "elevenlabs"),
    "llm": ("groq",),
    "tts": ("elevenlabs", "groq"),
}


def default_choice(stage: Stage, keys: ProviderKeys) -> StageChoice:
    """The preferred cloud provider whose key is present, else the local model."""
    with_key = [p for p in CLOUD_PREFERENCE[stage] if keys.get(p)]
    return choice_for(with_key[0] if with_key else "local", stage)


def choice_for(provider_id: str, stage: Stage, model: str | None = None, voice: str | None = None):
    """A complete choice for ``provider_id``, defaulting model and voice from its catalog."""
    catalog = PROVIDERS[provider_id].catalogs[stage]
    return StageChoice(
        provider_id,
        model or catalog.default_model,
        (voice or catalog.default_voice) if stage == "tts" else None,
    )
