"""Typed, timestamped events a session reports to whatever displays it.

These are the only thing that crosses from ``pipeline/`` to ``ui/``: plain
frozen dataclasses, each with ``t`` (seconds on ``time.time()``'s clock, so they
line up with pipecat's own metric timestamps) and a ``kind`` for JSON export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Event:
    t: float

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class SessionStarted(Event):
    """The pipeline is up and listening."""


@dataclass(frozen=True)
class SessionEnded(Event):
    reason: str = ""


@dataclass(frozen=True)
class ProvidersChanged(Event):
    """The services the following turns use, as "Provider model" labels (no keys)."""

    stt: str
    llm: str
    tts: str


@dataclass(frozen=True)
class UserStartedSpeaking(Event):
    """The user turn began (VAD start); interrupts the bot if it is speaking."""


@dataclass(frozen=True)
class UserStoppedSpeaking(Event):
    """The user turn ended (Smart Turn or the fallback timeout decided it)."""


@dataclass(frozen=True)
class UserTranscript(Event):
    text: str
    final: bool = True


@dataclass(frozen=True)
class UserTurnText(Event):
    """The whole user message as it went into the LLM context."""

    text: str


@dataclass(frozen=True)
class BotThinking(Event):
    """The LLM was asked for a reply."""


@dataclass(frozen=True)
class BotToken(Event):
    """A piece of the reply as the LLM streams it."""

    text: str


@dataclass(frozen=True)
class BotSentenceStarted(Event):
    """The audio of this piece of the reply (a sentence, or a word) started playing."""

    text: str


@dataclass(frozen=True)
class BotSpoken(Event):
    """The audio of this piece of the reply finished playing: it has been heard."""

    text: str


@dataclass(frozen=True)
class BotWordStarted(Event):
    """A word of the reply started playing (TTS services with word timestamps)."""

    text: str


@dataclass(frozen=True)
class BotStartedSpeaking(Event):
    """The first reply audio left for the browser."""


@dataclass(frozen=True)
class BotStoppedSpeaking(Event):
    pass


@dataclass(frozen=True)
class BotTurnText(Event):
    """The bot turn as it went into the LLM context: only what was actually spoken."""

    text: str
    interrupted: bool = False


@dataclass(frozen=True)
class Interrupted(Event):
    """The user spoke over the bot; queued audio was dropped."""


@dataclass(frozen=True)
class LatencyMeasured(Event):
    """Voice-to-voice: the user fell silent -> the bot's first audio out."""

    seconds: float
    contributions: tuple[tuple[str, float], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ServiceTTFB(Event):
    """Time to first byte of one service call (STT, LLM or TTS)."""

    stage: str
    service: str
    model: str | None
    seconds: float


@dataclass(frozen=True)
class UsageReported(Event):
    """LLM tokens or TTS characters used by one call."""

    stage: str
    amount: int


@dataclass(frozen=True)
class ErrorReported(Event):
    message: str
    fatal: bool = False


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def from_dict(data: dict) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output (session replay)."""
    kinds = {cls.__name__: cls for cls in _subclasses(Event)}
    fields = {k: v for k, v in data.items() if k != "kind"}
    if "contributions" in fields:
        fields["contributions"] = tuple(tuple(pair) for pair in fields["contributions"])
    return kinds[data["kind"]](**fields)
