"""Session settings: the server's defaults (:class:`ServerSettings`), then the page's choices.

The app makes every config with :meth:`SessionConfig.from_server`, from the
settings it read once at start; a config made without them (a benchmark, a
script) reads the environment for its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from pipeline.providers.base import ProviderKeys, Stage, StageChoice
from pipeline.providers.registry import (
    PROVIDERS,
    default_choice,
    keys_from_environment,
    offline_choice,
)
from pipeline.server_settings import ServerSettings

_SERVER_FIELDS = frozenset(ServerSettings.model_fields)


def _from_environment(name: str):
    """A field whose value, when a config is made without one, is the environment's setting."""
    return field(default_factory=lambda: getattr(ServerSettings.from_environ(), name))


@dataclass
class SessionConfig:
    """What one session's pipeline is built from.

    ``vad_stop_secs`` is the silence Silero waits out before the user is
    considered paused (every turn pays it); Smart Turn then decides whether the
    pause ends the turn, falling back to ``turn_fallback_secs`` of silence.

    Each stage defaults to the best-ranked provider whose key is present, else to
    the offline (local) one. ``keys`` are this session's own (typed in, or the server's).
    """

    keys: ProviderKeys = field(default_factory=keys_from_environment)
    stt: StageChoice | None = None
    llm: StageChoice | None = None
    tts: StageChoice | None = None

    system_prompt: str = _from_environment("system_prompt")
    vad_stop_secs: float = _from_environment("vad_stop_secs")
    smart_turn: bool = True
    # Start the reply when the user falls silent, hold it until Smart Turn
    # confirms the turn, drop it if they go on (pipeline/speculation.py).
    speculative: bool = _from_environment("speculative")
    # Offer the demo tools (pipeline/tools) to an LLM that can call them;
    # VOICE_LAB_TOOLS=0 turns them off for every session.
    tools: bool = _from_environment("tools")
    turn_fallback_secs: float = 2.0
    llm_max_tokens: int = _from_environment("llm_max_tokens")
    input_sample_rate: int = 16000
    output_sample_rate: int = 24000
    # Audio handed to fastrtc ahead of playback: a cushion against event-loop
    # jitter, and the most that can still play after a barge-in.
    output_lead_secs: float = 0.06
    # Re-transcribe the growing utterance this often (seconds of new speech) to
    # show interim words with segmented STT; 0 turns it off.
    interim_every_secs: float = 0.6
    # The live view: frame observers and UI updates. Off only to measure what they cost.
    dashboard: bool = True
    # A browser that stops sending audio this long has gone (tab closed, network
    # lost): WebRTC itself would only notice after ~30 s of ICE consent checks.
    audio_gone_secs: float = _from_environment("audio_gone_secs")
    # A session with no user speech and no bot speech for this long is closed.
    idle_timeout_secs: float = _from_environment("idle_timeout_secs")
    # Tool calls: the waiting phrase, the give-up time, a simulated back-end delay.
    tool_wait_phrase_secs: float = _from_environment("tool_wait_phrase_secs")
    tool_timeout_secs: float = _from_environment("tool_timeout_secs")
    tool_latency_secs: float = _from_environment("tool_latency_secs")

    @classmethod
    def from_server(cls, server: ServerSettings, **values) -> SessionConfig:
        """A config with the server's session defaults (its fields of the same names as
        this class's); ``values`` set the rest."""
        shared = {f.name: getattr(server, f.name) for f in fields(cls) if f.name in _SERVER_FIELDS}
        return cls(**{**shared, **values})

    def __post_init__(self):
        self.stt = self.stt or default_choice("stt", self.keys)
        self.llm = self.llm or default_choice("llm", self.keys)
        self.tts = self.tts or default_choice("tts", self.keys)

    def choices(self) -> dict[Stage, StageChoice]:
        # __post_init__ filled in every stage left out.
        assert self.stt and self.llm and self.tts
        return {"stt": self.stt, "llm": self.llm, "tts": self.tts}

    def labels(self) -> tuple[str, str, str]:
        """The STT, LLM and TTS choices as "Provider model" labels."""
        choices = self.choices()
        return (choices["stt"].label, choices["llm"].label, choices["tts"].label)

    def keyless_stages(self) -> list[Stage]:
        """Stages set to a cloud provider this session has no key for."""
        return [
            stage
            for stage, choice in self.choices().items()
            if PROVIDERS[choice.provider].needs_key and not self.keys.get(choice.provider)
        ]

    def with_local_fallback(self) -> SessionConfig:
        """This config with every keyless cloud stage on the offline provider instead."""
        return self.with_local_for(self.keyless_stages())

    def with_local_for(self, stages: list[Stage]) -> SessionConfig:
        """This config with ``stages`` on the offline provider (the local models)."""
        local = {stage: offline_choice(stage) for stage in stages}
        return replace(
            self,
            stt=local.get("stt", self.stt),
            llm=local.get("llm", self.llm),
            tts=local.get("tts", self.tts),
        )

    def server_key_stages(self) -> list[Stage]:
        """Stages running on the server's own key (a Space's secret), not one the visitor typed."""
        server = keys_from_environment()
        return [
            stage
            for stage, choice in self.choices().items()
            if PROVIDERS[choice.provider].needs_key
            and (key := self.keys.get(choice.provider))
            and key == server.get(choice.provider)
        ]
