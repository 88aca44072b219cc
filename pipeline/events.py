"""Typed, timestamped events a session reports to whatever displays it.

These are the only thing that crosses from ``pipeline/`` to ``ui/``: plain
frozen dataclasses, each with ``t`` (seconds on ``time.time()``'s clock, so they
line up with pipecat's own metric timestamps) and a ``kind`` for JSON export.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache, partial
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints


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
    """The pipeline is up and listening. ``session_id`` names the session in its traces."""

    session_id: str = ""


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


@dataclass(frozen=True)
class ServerKeyTime(Event):
    """Time left on the server's own API keys for this session (a public Space's budget)."""

    remaining: float
    limit: float


@dataclass(frozen=True)
class HeardLatency(Event):
    """A latency measured in the visitor's page, on its own clock, from what it played and heard.

    ``measure`` "reply": the microphone went quiet -> the bot's audio became
    audible; "barge-in": the user's voice started -> the bot's audio went
    silent. It includes what the server cannot see: both WebRTC legs, Opus, the
    browser's jitter buffer and playback. The reducer attributes it to the
    current turn. (The agreed schema called the field ``kind``, which every
    event already has: the class name that export and replay key on.)
    """

    measure: str
    ms: float


@dataclass(frozen=True)
class SpeculationStarted(Event):
    """A reply began on an eager transcript, before the turn was confirmed (held until it is)."""

    text: str


@dataclass(frozen=True)
class SpeculationEnded(Event):
    """The turn settled a speculation: adopted (its reply is the answer) or discarded.

    ``reason``: "confirmed", "resumed", "transcript changed", "interrupted",
    "turn ended", "tool call" or "provider error". ``wasted_tokens``: reply tokens a discarded
    speculation generated; ``wasted_chars``: TTS characters it synthesised (0:
    the TTS only receives released text). ``saved_ms``: how much earlier an
    adopted reply started than the turn's confirmation.
    """

    adopted: bool
    reason: str
    wasted_tokens: int = 0
    wasted_chars: int = 0
    saved_ms: float = 0.0


@dataclass(frozen=True)
class ToolCallStarted(Event):
    """The LLM called a tool; ``arguments`` is its JSON text, anything secret-shaped masked."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallFinished(Event):
    """A tool call ended: ``result`` is the speakable fact the LLM was given, or what went wrong."""

    call_id: str
    name: str
    ok: bool
    result: str


@dataclass(frozen=True)
class StageSpan(Event):
    """A stretch of one turn's work, on the events' clock: where it sits on the timeline.

    ``stage`` names the lane ("user", "vad", "turn", "stt", "llm", "tts",
    "playback"); ``label`` says what the stretch was (pipecat's latency
    breakdown labels, or "speech", "synthesis").
    """

    stage: str
    start: float
    end: float
    label: str = ""


@dataclass(frozen=True)
class VADTrace(Event):
    """Silero's speech probability through one stretch of speech, one value per window.

    ``levels`` holds two hex digits (00-ff) per ``step`` seconds from ``start``:
    text rather than a list, so a few hundred windows fit one bounded field.
    """

    start: float
    step: float
    levels: str


@dataclass(frozen=True)
class TurnDecision(Event):
    """Smart Turn judged a pause: finished or not, with its probability, ``ms`` after the pause."""

    complete: bool
    probability: float
    ms: float


@dataclass(frozen=True)
class OutputGap(Event):
    """The paced output had nothing to play for ``secs`` in the middle of a reply (an underrun)."""

    secs: float


@dataclass(frozen=True)
class UsageAmount(Event):
    """One billable amount: ``measure`` is "llm_input_tokens", "llm_output_tokens",
    "tts_characters" or "stt_audio_secs"."""

    measure: str
    amount: float


class EventFormatError(ValueError):
    """An event dict that :meth:`Event.to_dict` could not have written.

    The message names the event kind and field (both ours, never the file's
    text), so it is safe to show to whoever sent the file.
    """


# Bounds on what a replayed event may hold, generous for any real session: the
# longest text pipecat reports is a whole reply or utterance, the longest tuple
# a latency breakdown (up to 8 parts).
MAX_TEXT_CHARS = 10_000
MAX_ITEMS = 16
MAX_NUMBER = 1e12


def _subclasses(cls: type[Event]) -> list[type[Event]]:
    found: list[type[Event]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


_kinds: dict[str, type[Event]] = {}


def _kind(name: str) -> type[Event] | None:
    """The event class called ``name``; the table is rebuilt when a class is not in it yet."""
    if name not in _kinds:
        _kinds.update((cls.__name__, cls) for cls in _subclasses(Event))
    return _kinds.get(name)


class _Mismatch(Exception):
    """A value that does not fit its type hint; ``path`` says where inside the field."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = ""


Converter = Callable[[object], object]


@cache
def _schema(cls: type[Event]) -> tuple[dict[str, Converter], frozenset[str]]:
    """A converter per field (from its type hint), and the fields without a default."""
    hints = get_type_hints(cls)
    init = [f for f in fields(cls) if f.init]
    converters = {f.name: _converter(hints[f.name]) for f in init}
    required = frozenset(
        f.name for f in init if f.default is MISSING and f.default_factory is MISSING
    )
    return converters, required


@cache
def _converter(hint: object) -> Converter:
    """A function that checks a JSON-decoded value against ``hint`` and converts it to it.

    Built once per type hint, so checking an event costs a few calls per field.
    """
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return _union(type(None) in args, [_converter(a) for a in args if a is not type(None)])
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _variadic_tuple(_converter(args[0]))
    if origin is tuple:
        return _fixed_tuple([_converter(arg) for arg in args])
    if hint is str:
        return _text
    if hint is bool:
        return _flag
    if hint in (int, float):
        return partial(_number, hint)
    raise TypeError(f"events.from_dict cannot check a field of type {hint!r}")


def _union(nullable: bool, options: list[Converter]) -> Converter:
    def convert(value: object) -> object:
        if value is None and nullable:
            return None
        for option in options[:-1]:
            with suppress(_Mismatch):
                return option(value)
        return options[-1](value)

    return convert


def _items(converters: list[Converter], values: list | tuple) -> tuple:
    converted = []
    for index, (convert, value) in enumerate(zip(converters, values, strict=True)):
        try:
            converted.append(convert(value))
        except _Mismatch as e:
            e.path = f"[{index}]{e.path}"
            raise
    return tuple(converted)


def _variadic_tuple(convert: Converter) -> Converter:
    def convert_all(value: object) -> tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch("must be a list")
        if len(value) > MAX_ITEMS:
            raise _Mismatch(f"holds more than {MAX_ITEMS} items")
        return _items([convert] * len(value), value)

    return convert_all


def _fixed_tuple(converters: list[Converter]) -> Converter:
    def convert_all(value: object) -> tuple:
        if not isinstance(value, list | tuple):
            raise _Mismatch("must be a list")
        if len(value) != len(converters):
            raise _Mismatch(f"must hold {len(converters)} items")
        return _items(converters, value)

    return convert_all


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _Mismatch("must be a string")
    if len(value) > MAX_TEXT_CHARS:
        raise _Mismatch(f"is longer than {MAX_TEXT_CHARS:,} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate, which JSON allows
            raise _Mismatch("is not valid Unicode text") from None
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Mismatch("must be true or false")
    return value


def _number(kind: type, value: object) -> int | float:
    # bool is an int to Python, but true is not a number of seconds.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Mismatch("must be a number")
    if kind is int and not isinstance(value, int):
        raise _Mismatch("must be a whole number")
    if not abs(value) <= MAX_NUMBER:  # also NaN
        raise _Mismatch(f"must be a finite number within ±{MAX_NUMBER:g}")
    return kind(value)


def from_dict(data: object) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output (session replay), checking every field.

    Each field is checked against its type hint and converted (JSON lists to
    tuples, whole numbers to floats), so whatever a file holds, the reducer and
    the renderers only ever see values of the types they were written for.
    Raises :class:`EventFormatError` for anything else.
    """
    if not isinstance(data, dict):
        raise EventFormatError("an event must be a JSON object")
    kind = data.get("kind")
    cls = _kind(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventFormatError("unknown event kind")
    # A class object is hashable; mypy checks it against the instances' __hash__ instead.
    converters, required = _schema(cls)  # type: ignore[arg-type]
    given = data.keys() - {"kind"}
    if given - converters.keys():
        raise EventFormatError(f"{kind} has a field it does not define")
    if required - given:
        raise EventFormatError(f"{kind} lacks its {sorted(required - given)[0]!r} field")
    values: dict[str, Any] = {}
    for name in given:
        try:
            values[name] = converters[name](data[name])
        except _Mismatch as e:
            raise EventFormatError(f"{kind}.{name}{e.path} {e.problem}") from None
    return cls(**values)
