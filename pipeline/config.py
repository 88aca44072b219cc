"""Session settings, with defaults from the environment (documented in ``.env.example``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pipeline.providers.base import ProviderKeys, Stage, StageChoice
from pipeline.providers.registry import (
    PROVIDERS,
    default_choice,
    keys_from_environment,
    offline_choice,
)

DEFAULT_SYSTEM_PROMPT = (
    "You are Voice Lab, a friendly voice assistant. Your words are spoken aloud, "
    "so answer in one or two short, plain sentences. No lists, no markdown, no emoji."
)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def env_flag(name: str, default: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """The one true/false rule for every setting: 1/true/yes/on, 0/false/no/off, unset: default.

    Anything else is a mistake worth stopping for, not a guess.
    """
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"{name}={value!r}: expected one of {', '.join(TRUE + FALSE)}")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


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

    system_prompt: str = field(
        default_factory=lambda: os.environ.get("VOICE_LAB_SYSTEM_PROMPT", DEFAULT_SYSTEM_PROMPT)
    )
    vad_stop_secs: float = field(default_factory=lambda: _env_float("VOICE_LAB_VAD_STOP_SECS", 0.2))
    smart_turn: bool = True
    # Start the reply when the user falls silent, hold it until Smart Turn
    # confirms the turn, drop it if they go on (pipeline/speculation.py).
    speculative: bool = field(default_factory=lambda: env_flag("VOICE_LAB_SPECULATIVE", True))
    # Offer the demo tools (pipeline/tools) to an LLM that can call them;
    # VOICE_LAB_TOOLS=0 turns them off for every session.
    tools: bool = field(default_factory=lambda: tools_allowed())
    turn_fallback_secs: float = 2.0
    llm_max_tokens: int = field(default_factory=lambda: _env_int("VOICE_LAB_LLM_MAX_TOKENS", 80))
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
    audio_gone_secs: float = field(
        default_factory=lambda: _env_float("VOICE_LAB_AUDIO_GONE_SECS", 1.5)
    )
    # A session with no user speech and no bot speech for this long is closed.
    idle_timeout_secs: float = field(
        default_factory=lambda: _env_float("VOICE_LAB_IDLE_TIMEOUT_SECS", 600.0)
    )

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


def server_key_budget_secs() -> float:
    """How long one visitor may use the server's own API keys per window (0: no limit).

    On a public Space the owner's keys serve every visitor who types none, so
    each visitor gets this much time on them per :func:`server_key_window_secs`
    (fastrtc's demos use 90 s there), then continues on the local models.
    """
    default = 90.0 if os.environ.get("SPACE_ID") else 0.0
    return _env_float("VOICE_LAB_SERVER_KEY_SECS", default)


def server_key_window_secs() -> float:
    """The window a visitor's time on the server's keys is counted over (then it starts afresh)."""
    return _env_float("VOICE_LAB_SERVER_KEY_WINDOW_SECS", 3600.0)


def max_sessions() -> int:
    """How many browser connections the server accepts at once (beyond that: a clear refusal)."""
    return max(1, _env_int("VOICE_LAB_MAX_SESSIONS", 4))


def max_sessions_per_client() -> int:
    """Connections one client may hold at once: fewer than the total, so none holds every slot.

    (With a single slot in all, that one.)
    """
    configured = _env_int("VOICE_LAB_MAX_SESSIONS_PER_CLIENT", 2)
    return max(1, min(configured, max_sessions() - 1))


def admission_secs() -> float:
    """A connection that sent no audio this long after its offer is closed, its slot freed."""
    return _env_float("VOICE_LAB_ADMISSION_SECS", 10.0)


def handshake_secs() -> float:
    """A connection whose ICE and DTLS have not completed this long after its offer is closed."""
    return _env_float("VOICE_LAB_HANDSHAKE_SECS", 5.0)


def offers_per_minute() -> int:
    """WebRTC offers one client may make per minute (each press of Record is one)."""
    return _env_int("VOICE_LAB_OFFERS_PER_MINUTE", 12)


def tools_allowed() -> bool:
    """Whether this server offers tools at all (``VOICE_LAB_TOOLS=0``: never, whatever the page)."""
    return env_flag("VOICE_LAB_TOOLS", True)


# -- this process as one worker of several (python -m deploy) ---------------------------------


def worker_id() -> str:
    """The name this process gives itself in responses, logs and health answers.

    ``python -m deploy`` names its workers ``w1``, ``w2``...; a single process is
    named after its host and port, so two servers on one machine still differ.
    """
    named = os.environ.get("VOICE_LAB_WORKER_ID", "").strip()
    if named:
        return named
    import socket

    port = os.environ.get("GRADIO_SERVER_PORT", "7860").strip()
    return f"{socket.gethostname()}:{port}"


def agent_port() -> int | None:
    """The TCP port where HAProxy's agent-check asks whether this worker takes new visitors."""
    value = os.environ.get("VOICE_LAB_AGENT_PORT", "").strip()
    return int(value) if value else None


def balancer_cookie() -> str | None:
    """The cookie the balancer pins a visitor to a worker with (set by ``python -m deploy``).

    A worker that turns a visitor away because it is full expires it, so their
    next page load is placed on a worker with room.
    """
    return os.environ.get("VOICE_LAB_BALANCER_COOKIE", "").strip() or None


def access_log() -> bool:
    """One log line per HTTP request (method, path, status, worker): off unless asked."""
    return env_flag("VOICE_LAB_ACCESS_LOG", False)
