"""What every provider is made of: stages, keys, catalogs, capabilities, the :class:`Provider`.

Provider modules import this module, never :mod:`pipeline.providers.registry`
(which imports them); and nothing here imports a provider, the session config
or pipecat at run time, so any module can use these types without an import
circle or the cost of loading the services.

Keys never live in module state: they travel inside a session's
:class:`ProviderKeys`, which prints masked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pipeline import redaction

if TYPE_CHECKING:
    from pipecat.processors.frame_processor import FrameProcessor

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

    def with_overrides(self, typed: Mapping[str, str | None]) -> ProviderKeys:
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


@dataclass(frozen=True)
class StageChoice:
    """What a session uses for one stage: provider id, model, and (TTS) voice.

    Made by :func:`pipeline.providers.registry.choice_for`, which also copies
    in the provider's label so that the choice can name itself.
    """

    provider: str
    model: str
    voice: str | None = None
    provider_label: str = field(default="", compare=False, repr=False)

    @property
    def label(self) -> str:
        """Short, human label for the dashboard: "Groq llama-3.1-8b-instant"."""
        return f"{self.provider_label or self.provider} {self.model}"


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


@dataclass(frozen=True)
class Capabilities:
    """What a provider's service for one stage can do that the rest of the app adapts to.

    Declared per stage because each is a property of one service: the words a
    user says appear while they speak only if the *STT* sends interim text,
    tools can be offered only to an *LLM* that calls them, and the reply is
    highlighted word by word only if the *TTS* says when each word plays. Each
    field names its stage in its metadata, and a :class:`Provider` refuses a
    capability declared on another stage, so a misplaced one cannot go
    unnoticed. The app asks :func:`pipeline.providers.registry.capabilities`,
    never which provider it is running.
    """

    # Sends interim text while the user is still speaking (else only the final transcript).
    interim_text: bool = field(default=False, metadata={"stage": "stt"})
    # Transcribes as the audio streams in: its latest partial already covers the
    # utterance when the user falls silent (else it transcribes whole segments).
    streaming: bool = field(default=False, metadata={"stage": "stt"})
    # Calls tools (function calling) when the context offers them.
    tools: bool = field(default=False, metadata={"stage": "llm"})
    # Reports when each word starts playing (else only whole sentences).
    word_timing: bool = field(default=False, metadata={"stage": "tts"})
    # Takes the reply's text token by token and decides itself when to generate
    # (else it is handed whole phrases: the first clause, then sentences).
    streamed_text: bool = field(default=False, metadata={"stage": "tts"})

    def declared(self) -> dict[str, Stage]:
        """The capabilities set here, with the stage each belongs to."""
        return {f.name: f.metadata["stage"] for f in fields(self) if getattr(self, f.name)}


class SessionSettings(Protocol):
    """What a service factory reads of a session's config (:class:`pipeline.config.SessionConfig`).

    A protocol, so that providers need not import the config, which asks the
    registry for its defaults.
    """

    system_prompt: str
    llm_max_tokens: int
    interim_every_secs: float


# (choice, key or None, session settings, the process's embedded models) -> service.
# The models (pipeline.providers.local.models.LocalModels) are read by the offline
# provider only; they are passed in so that a test can hand a session its own.
ServiceFactory = Callable[[StageChoice, "str | None", SessionSettings, Any], "FrameProcessor"]
CatalogFetcher = Callable[[str], Awaitable[dict[Stage, Catalog]]]


def _always_available(_stage: Stage) -> str | None:
    return None


@dataclass(frozen=True)
class Provider:
    """One provider: what it offers per stage, what each stage can do, how to build it.

    ``default_rank`` and ``offline`` are how the registry picks defaults
    without naming anybody: a stage defaults to the best-ranked provider whose
    key is present, else to the one offline provider.
    """

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
    # What each stage's service can do; a stage not listed can do none of it.
    capabilities: dict[Stage, Capabilities] = field(default_factory=dict)
    # Its place when a stage's default is picked among the providers a session has a
    # key for: lower first, ties in registry order. A stage not listed is never a
    # default; a visitor can still pick it.
    default_rank: dict[Stage, int] = field(default_factory=dict)
    # Runs with no key and no network: what a stage falls back to when its provider
    # cannot run (no key, a key time limit spent). The registry has exactly one.
    offline: bool = False
    # Why a stage cannot run on this server, or None (a native runtime that failed its
    # start-up probe, say); the settings panel marks such a stage unavailable.
    unavailable: Callable[[Stage], str | None] = _always_available
    stages: tuple[Stage, ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(s for s in STAGES if s in self.factories))
        if set(self.catalogs) != set(self.factories):
            raise ValueError(f"{self.id}: a catalog and a factory for each stage it offers")
        for stage, capabilities in self.capabilities.items():
            misplaced = [n for n, s in capabilities.declared().items() if s != stage]
            if stage not in self.stages or misplaced:
                raise ValueError(f"{self.id}: {misplaced or 'capabilities'} declared on {stage}")
        if not set(self.default_rank) <= set(self.stages):
            raise ValueError(f"{self.id}: a default rank for a stage it does not offer")
        if self.offline and self.needs_key:
            raise ValueError(f"{self.id}: an offline provider needs no key")

    @property
    def needs_key(self) -> bool:
        return self.key_env is not None

    def capabilities_of(self, stage: Stage) -> Capabilities:
        return self.capabilities.get(stage, Capabilities())

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
