"""What a conversation costs on a stack of providers: one price table, one function.

A stack is what the dashboard labels each turn with: per stage, the
"Provider model" label of :attr:`pipeline.providers.base.StageChoice.label`
("Groq llama-3.1-8b-instant"). :func:`cost_of` prices a :class:`Usage` on
any stack, so the live dashboard and a comparison of stacks share one answer.
Local models cost $0.

Usage is billed as each provider bills it, not as it was measured: a unit
(tokens, characters, seconds of audio) and, where the provider has one, a
least amount per request. Groq bills every transcription request as at least
10 s of audio, so a 1.3 s question costs what 10 s would: :class:`Usage` keeps
each speech-to-text request's seconds apart (``stt_requests``) for that.

Every price names the page it (and its billing rule) was read from and the
day, and an environment variable overrides it (``.env.example`` lists them).
Groq's speech-to-text page was read itself; the other official pages
(https://groq.com/pricing, https://elevenlabs.io/pricing/api) were not
reachable from where these were gathered, and those figures come from a page
that quotes them, named in ``source``. Prices change: check before relying on one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

READ_ON = "2026-11-30"
# The speech-to-text pages, read again for their billing rules.
STT_READ_ON = "2026-12-03"
LOCAL = "Local"


@dataclass(frozen=True)
class Usage:
    """Billable amounts, in the units providers bill by.

    ``stt_requests`` holds each speech-to-text request's seconds (they sum to
    ``stt_audio_secs``), because a provider may bill a short request as a
    longer one. A usage made with ``stt_audio_secs`` alone is one request.
    """

    llm_input_tokens: float = 0
    llm_output_tokens: float = 0
    tts_characters: float = 0
    stt_audio_secs: float = 0
    stt_requests: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.stt_audio_secs and not self.stt_requests:
            object.__setattr__(self, "stt_requests", (self.stt_audio_secs,))

    @classmethod
    def of(cls, measure: str, amount: float) -> Usage:
        """``amount`` of one of :data:`MEASURES` (each a number field, never ``stt_requests``)."""
        amounts: dict[str, Any] = {measure: amount}
        return cls(**amounts)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.llm_input_tokens + other.llm_input_tokens,
            self.llm_output_tokens + other.llm_output_tokens,
            self.tts_characters + other.tts_characters,
            self.stt_audio_secs + other.stt_audio_secs,
            self.stt_requests + other.stt_requests,
        )


MEASURES = ("llm_input_tokens", "llm_output_tokens", "tts_characters", "stt_audio_secs")
# Which stage of a stack each measure is billed by.
STAGE_OF = {
    "llm_input_tokens": "llm",
    "llm_output_tokens": "llm",
    "tts_characters": "tts",
    "stt_audio_secs": "stt",
}
# The vendors' own units: dollars per million tokens or characters, per hour of audio.
UNIT_SIZE = {
    "llm_input_tokens": 1e6,
    "llm_output_tokens": 1e6,
    "tts_characters": 1e6,
    "stt_audio_secs": 3600.0,
}
UNIT_NAME = {
    "llm_input_tokens": "$ per 1M input tokens",
    "llm_output_tokens": "$ per 1M output tokens",
    "tts_characters": "$ per 1M characters",
    "stt_audio_secs": "$ per hour of audio",
}


@dataclass(frozen=True)
class Price:
    """One rate: ``usd`` per vendor unit of ``measure``, for one provider's model.

    ``minimum`` is the least of ``measure`` the provider bills for one request
    (seconds of audio for Groq's Whisper); ``billing`` says the rule in words.
    """

    provider: str
    model: str
    measure: str
    usd: float
    source: str
    billing: str
    minimum: float = 0.0
    read_on: str = READ_ON

    @property
    def env(self) -> str:
        """The variable that overrides it: VOICE_LAB_PRICE_<PROVIDER>_<MODEL>_<MEASURE>."""
        model = "".join(c if c.isalnum() else "_" for c in self.model).upper()
        return f"VOICE_LAB_PRICE_{self.provider.upper()}_{model}_{self.measure.upper()}"

    def current(self) -> float:
        """The price now: the override if one is set (and is a number >= 0), else the table's."""
        raw = os.environ.get(self.env, "").strip()
        try:
            value = float(raw) if raw else self.usd
        except ValueError:
            return self.usd
        return value if value >= 0 else self.usd


_GROQ_LLAMA_8B = "https://tessl.io/registry/skills/github/jeremylongshore/claude-code-plugins-plus-skills/groq-cost-tuning"
_GROQ_LLAMA_70B = (
    "https://theneuralbase.com/groq/learn/intermediate/cost-per-user-for-voice-applications/"
)
_GROQ_GPT_OSS = "https://requesty.ai/models/groq/openai-gpt-oss-20b"
# Groq's own page: the price per hour and "Minimum Billed Length: 10 seconds. If you
# submit a request less than this, you will still be billed for 10 seconds."
_GROQ_WHISPER = "https://console.groq.com/docs/speech-to-text"
_GROQ_ORPHEUS = (
    "https://raw.githubusercontent.com/MCERQUA/OpenVoiceUI/main/tts_providers/groq_provider.py"
)
_ELEVENLABS = "https://developer.puter.com/tutorials/elevenlabs-api-pricing/"
# "billed per second of streamed audio", at ElevenLabs' $0.39 an hour.
_ELEVENLABS_REALTIME = "https://vercel.com/ai-gateway/models/scribe-v2-realtime"

PER_TOKEN = "per token, input and output apart; no minimum per request"
PER_CHARACTER = "per character of text sent; no minimum per request"
GROQ_STT_BILLING = "per second of audio, each request billed as at least 10 s"
GROQ_STT_MINIMUM_SECS = 10.0
STREAMED_AUDIO = "per second of audio streamed to it (silence too); no minimum"

PRICES: tuple[Price, ...] = (
    Price("Groq", "llama-3.1-8b-instant", "llm_input_tokens", 0.05, _GROQ_LLAMA_8B, PER_TOKEN),
    Price("Groq", "llama-3.1-8b-instant", "llm_output_tokens", 0.08, _GROQ_LLAMA_8B, PER_TOKEN),
    Price("Groq", "llama-3.3-70b-versatile", "llm_input_tokens", 0.59, _GROQ_LLAMA_70B, PER_TOKEN),
    Price("Groq", "llama-3.3-70b-versatile", "llm_output_tokens", 0.79, _GROQ_LLAMA_70B, PER_TOKEN),
    Price("Groq", "openai/gpt-oss-20b", "llm_input_tokens", 0.10, _GROQ_GPT_OSS, PER_TOKEN),
    Price("Groq", "openai/gpt-oss-20b", "llm_output_tokens", 0.50, _GROQ_GPT_OSS, PER_TOKEN),
    Price(
        "Groq",
        "whisper-large-v3-turbo",
        "stt_audio_secs",
        0.04,
        _GROQ_WHISPER,
        GROQ_STT_BILLING,
        GROQ_STT_MINIMUM_SECS,
        STT_READ_ON,
    ),
    Price(
        "Groq",
        "whisper-large-v3",
        "stt_audio_secs",
        0.111,
        _GROQ_WHISPER,
        GROQ_STT_BILLING,
        GROQ_STT_MINIMUM_SECS,
        STT_READ_ON,
    ),
    # A code comment's "~$0.05/1K chars": the least sure figure here.
    Price(
        "Groq",
        "canopylabs/orpheus-v1-english",
        "tts_characters",
        50.0,
        _GROQ_ORPHEUS,
        PER_CHARACTER,
    ),
    Price("ElevenLabs", "eleven_flash_v2_5", "tts_characters", 50.0, _ELEVENLABS, PER_CHARACTER),
    Price("ElevenLabs", "eleven_turbo_v2_5", "tts_characters", 50.0, _ELEVENLABS, PER_CHARACTER),
    Price(
        "ElevenLabs", "eleven_multilingual_v2", "tts_characters", 100.0, _ELEVENLABS, PER_CHARACTER
    ),
    Price(
        "ElevenLabs",
        "scribe_v2_realtime",
        "stt_audio_secs",
        0.39,
        _ELEVENLABS_REALTIME,
        STREAMED_AUDIO,
        read_on=STT_READ_ON,
    ),
)
_BY_KEY = {(p.provider, p.model, p.measure): p for p in PRICES}


def split_label(label: str) -> tuple[str, str]:
    """("Groq", "llama-3.1-8b-instant") from "Groq llama-3.1-8b-instant"."""
    provider, _, model = label.partition(" ")
    return provider, model


def price_of(label: str, measure: str) -> Price | None:
    """The price of ``measure`` on the model ``label`` names; None if the table has none."""
    return _BY_KEY.get((*split_label(label), measure))


def unpriced(stack: Mapping[str, str]) -> list[str]:
    """The stack's cloud models this table has no price for (their usage counts as $0)."""
    missing = []
    for measure, stage in STAGE_OF.items():
        label = stack.get(stage, LOCAL)
        if split_label(label)[0] != LOCAL and price_of(label, measure) is None:
            missing.append(label)
    return list(dict.fromkeys(missing))


def billed(usage: Usage, measure: str, price: Price) -> float:
    """How much of ``measure`` the provider bills for ``usage`` (a short request as its minimum)."""
    if measure == "stt_audio_secs" and price.minimum:
        return sum(max(secs, price.minimum) for secs in usage.stt_requests)
    return getattr(usage, measure)


def cost_of(usage: Usage, stack: Mapping[str, str]) -> float:
    """Dollars ``usage`` costs on ``stack`` ({"stt": label, "llm": label, "tts": label}).

    Each measure is billed as its provider bills it (:func:`billed`). Local
    stages cost nothing; a cloud model missing from the table counts as $0
    too and is named by :func:`unpriced`, so a figure is never silently made up.
    """
    total = 0.0
    for measure, stage in STAGE_OF.items():
        price = price_of(stack.get(stage, LOCAL), measure) if getattr(usage, measure) else None
        if price is not None:
            total += billed(usage, measure, price) / UNIT_SIZE[measure] * price.current()
    return total


def format_usd(value: float) -> str:
    """Dollars to two significant figures however small: "$0.0000031", "$0.042", "$1.20"."""
    if value <= 0:
        return "$0"
    if value >= 1:
        return f"${value:.2f}"
    decimals = max(2, 1 - math.floor(math.log10(value)))
    return f"${value:.{decimals}f}"
