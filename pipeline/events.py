"""Typed, timestamped events a session reports to whatever displays it.

These are the only thing that crosses from ``pipeline/`` to ``ui/``: plain
frozen dataclasses, each with ``t`` (seconds on ``time.time()``'s clock, so they
line up with pipecat's own metric timestamps) and a ``kind`` for JSON export.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from types import GenericAlias, UnionType
from typing import Annotated, Any, NotRequired, Union, get_args, get_origin, get_type_hints

from annotated_types import Interval, MaxLen
from pydantic import ConfigDict, FailFast, Strict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic's choice before Python 3.12


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


# The rules for every field. Strict: true is not 1, "1" is not a number and 1.5
# is not a count (a whole number does fill a float field, as a float). Text of
# a bounded length (pydantic also refuses a lone surrogate, which JSON allows
# but UTF-8 cannot encode), finite numbers, and no field the event does not define.
_CONFIG = ConfigDict(
    strict=True, extra="forbid", str_max_length=MAX_TEXT_CHARS, allow_inf_nan=False
)


def _checked(hint: Any) -> Any:
    """``hint`` with the rules a config cannot say, on the types inside it.

    Numbers are bounded. Tuples are lax, so that a JSON list becomes one
    (strict, only a tuple would do), and one of any length holds MAX_ITEMS at
    most. FailFast: pydantic stops at a list's first bad item, where it would
    otherwise check (and report) every one before its length, however many.
    """
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return Union[tuple(_checked(arg) for arg in args)]  # noqa: UP007 (no X | Y to write)
    # tuple[...] of types known at run time: GenericAlias, since mypy wants types written there.
    if origin is tuple and args[1:] == (Ellipsis,):
        items = GenericAlias(tuple, (_checked(args[0]), ...))
        return Annotated[items, Strict(False), FailFast(), MaxLen(MAX_ITEMS)]
    if origin is tuple:
        return Annotated[GenericAlias(tuple, tuple(map(_checked, args))), Strict(False)]
    if hint in (int, float):
        return Annotated[hint, Interval(ge=-MAX_NUMBER, le=MAX_NUMBER)]
    if hint in (str, bool, type(None)):
        return hint
    raise TypeError(f"events.from_dict cannot check a field of type {hint!r}")


@cache
def _validator(cls: type[Event]) -> TypeAdapter[dict[str, Any]]:
    """Checks the fields of a ``cls`` event as a dict: its own type hints, with the rules on.

    Built the first time a kind is replayed, so a new event class needs nothing here.
    """
    hints = get_type_hints(cls)
    shape = {
        f.name: _checked(hints[f.name])
        if f.default is MISSING and f.default_factory is MISSING
        else NotRequired[_checked(hints[f.name])]  # the dataclass fills in its default
        for f in fields(cls)
        if f.init
    }
    # mypy reads TypedDict() as a declaration, with literal arguments; this one is built.
    typed_dict = TypedDict(cls.__name__, shape)  # type: ignore[misc]
    return TypeAdapter(with_config(_CONFIG)(typed_dict))


# Each problem in our own words: pydantic's messages quote the input, which is
# the file's text. ``{...}`` are limits from the error's context (ours too).
_OUT_OF_RANGE = f"must be a finite number within ±{MAX_NUMBER:g}"
_PROBLEMS = {
    "string_type": "must be a string",
    "string_too_long": "is longer than {max_length:,} characters",
    "string_unicode": "is not valid Unicode text",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "finite_number": _OUT_OF_RANGE,
    "greater_than_equal": _OUT_OF_RANGE,
    "less_than_equal": _OUT_OF_RANGE,
    "tuple_type": "must be a list",
    "missing": "is missing",  # an item of a fixed-length tuple (a missing field: see below)
    "too_long": "holds more than {max_length} items",
    "too_long_fixed": "must hold {max_length} items",
}


def _message(kind: str, error: ValidationError) -> str:
    # Of several errors: a field the event does not define, then a missing one, then the first.
    first = min(
        error.errors(include_url=False, include_input=False),
        key=lambda e: {"extra_forbidden": 0, "missing": 1}.get(e["type"], 2),
    )
    problem, limits = first["type"], first.get("ctx", {})
    name, *inside = first["loc"]
    if problem == "extra_forbidden":  # ``name`` is the file's text here: not shown
        return f"{kind} has a field it does not define"
    if problem == "missing" and not inside:
        return f"{kind} lacks its {name!r} field"
    if problem == "too_long" and limits["max_length"] != MAX_ITEMS:
        problem = "too_long_fixed"  # a tuple of fixed length, not a list of up to MAX_ITEMS
    # The ints are tuple indexes; any str inside is pydantic's name for a member of a union.
    path = "".join(f"[{index}]" for index in inside if isinstance(index, int))
    return f"{kind}.{name}{path} {_PROBLEMS.get(problem, 'is not valid').format(**limits)}"


def from_dict(data: object) -> Event:
    """Rebuild an event from :meth:`Event.to_dict` output (session replay), checking every field.

    pydantic checks each field against its type hint and converts it (JSON
    lists to tuples, whole numbers to floats), so whatever a file holds, the
    reducer and the renderers only ever see values of the types they were
    written for. Raises :class:`EventFormatError` for anything else.
    """
    if not isinstance(data, dict):
        raise EventFormatError("an event must be a JSON object")
    kind = data.get("kind")
    cls = _kind(kind) if isinstance(kind, str) else None
    if cls is None:
        raise EventFormatError("unknown event kind")
    given = {name: value for name, value in data.items() if name != "kind"}
    if len(given) > len(cls.__dataclass_fields__):
        # Refused at once: pydantic would report each extra key, and a file may hold thousands.
        raise EventFormatError(f"{cls.__name__} has a field it does not define")
    try:
        # A class object is hashable; mypy checks it against the instances' __hash__ instead.
        values = _validator(cls).validate_python(given)  # type: ignore[arg-type]
    except ValidationError as e:
        raise EventFormatError(_message(cls.__name__, e)) from None
    return cls(**values)
