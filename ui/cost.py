"""The cost panel (#cost): dollars per turn and per minute of conversation, live.

Usage comes from pipecat's usage metrics (LLM tokens in and out, TTS
characters, STT audio seconds per request; the user's speech time where an
STT reports no audio), billed and priced by :mod:`pipeline.pricing` as each
provider bills it (Groq's 10 s least per transcription) on the stack each turn ran on. The
same usage priced on a few other stacks shows what the conversation would
have cost there. Cheap: a few multiplications per update.
"""

from __future__ import annotations

from pipeline import pricing
from ui import markup
from ui.state import SessionState
from ui.timeline import turn_usage
from ui.turnlog import Spend

# Stacks the session's usage is also priced on, as (name, stt, llm, tts).
OTHER_STACKS = (
    ("All local", "Local whisper-tiny.en", "Local SmolLM2-135M-Instruct", "Local piper-joe-medium"),
    (
        "Groq + ElevenLabs",
        "Groq whisper-large-v3-turbo",
        "Groq llama-3.1-8b-instant",
        "ElevenLabs eleven_flash_v2_5",
    ),
    (
        "All Groq",
        "Groq whisper-large-v3-turbo",
        "Groq llama-3.1-8b-instant",
        "Groq canopylabs/orpheus-v1-english",
    ),
    (
        "ElevenLabs + Groq 70B",
        "ElevenLabs scribe_v2_realtime",
        "Groq llama-3.3-70b-versatile",
        "ElevenLabs eleven_multilingual_v2",
    ),
)
# Shorter than this, a per-minute figure would mostly be noise.
MIN_MINUTES = 0.1


def _stack(labels: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(("stt", "llm", "tts"), labels, strict=True))


def _billed(entry: Spend) -> pricing.Usage:
    if entry.usage.stt_audio_secs or not entry.speech_secs:
        return entry.usage
    return entry.usage + pricing.Usage(stt_audio_secs=entry.speech_secs)


def session_usage(state: SessionState) -> pricing.Usage:
    """Everything the session used, over every stack it ran on."""
    total = pricing.Usage()
    for entry in state.turn_logs.spend:
        total = total + _billed(entry)
    return total


def session_cost(state: SessionState) -> float:
    """The session's dollars, each stack's usage priced on that stack."""
    return sum(pricing.cost_of(_billed(e), _stack(e.stack)) for e in state.turn_logs.spend)


def turn_cost(state: SessionState, turn: int) -> float | None:
    """Turn ``turn``'s dollars on the stack it ran on; None if its record is gone or never was.

    A turn's record is its last one with that number (a barge-in without
    words keeps the number for the turn that follows).
    """
    for log in reversed(state.turn_logs.turns):
        if log.number == turn:
            return pricing.cost_of(turn_usage(log), _stack(log.stack))
    return None


def conversation_minutes(state: SessionState) -> float:
    logs = state.turn_logs
    if logs.started is None or logs.last is None:
        return 0.0
    return max(0.0, logs.last - logs.started) / 60


def render_cost(state: SessionState) -> str:
    logs = state.turn_logs
    total = session_cost(state)
    minutes = conversation_minutes(state)
    last = logs.current
    last_cost = pricing.cost_of(turn_usage(last), _stack(last.stack)) if last is not None else None
    per_minute = pricing.format_usd(total / minutes) if minutes >= MIN_MINUTES else "–"
    cells = [
        ("this turn", pricing.format_usd(last_cost) if last_cost is not None else "–"),
        (
            "per turn (mean)",
            pricing.format_usd(total / state.user_turns) if state.user_turns else "–",
        ),
        ("per minute", per_minute),
        ("session", pricing.format_usd(total)),
    ]
    usage = session_usage(state)
    stt_billed = None
    if state.providers is not None:
        stt_price = pricing.price_of(state.providers.stt, "stt_audio_secs")
        billed = pricing.billed(usage, "stt_audio_secs", stt_price) if stt_price else 0.0
        if stt_price and billed > usage.stt_audio_secs + 0.05:
            stt_billed = (billed, stt_price.billing)
    others = []
    for name, *labels in OTHER_STACKS:
        there = pricing.cost_of(usage, _stack(tuple(labels)))
        there_per_minute = pricing.format_usd(there / minutes) if minutes >= MIN_MINUTES else "–"
        others.append((name, pricing.format_usd(there), there_per_minute))
    current = state.providers
    unpriced = (
        [] if current is None else pricing.unpriced(_stack((current.stt, current.llm, current.tts)))
    )
    return markup.render(
        "cost.html",
        cells=cells,
        stack=current.label if current is not None else "",
        unpriced=unpriced,
        others=others,
        usage=usage,
        stt_billed=stt_billed,
        read_on=pricing.READ_ON,
    )
