"""The stacks a suite can be scored on: what each session is built from, and who answers.

- ``local``: the embedded models (Whisper, SmolLM2 or the hub model
  ``VOICE_LAB_LOCAL_LLM`` names, Piper). Real: this is what a visitor
  without a key talks to.
- ``cloud`` / ``cloud-streaming``: Groq (Whisper, Llama) and ElevenLabs
  (Flash; Scribe realtime for the streaming STT), with the keys in the
  environment. Real providers answer.
- ``cloud-sim`` / ``cloud-sim-streaming``: the same pipecat services against
  the provider fakes of :mod:`bench.cloudsim`, at the providers' published
  latencies. For CI and for latency only: what the fakes answer is what this
  module tells them to, so their pass rate says nothing of a stack's quality.

On the simulated stacks the transcription fakes recognise the suite's
recordings (a turn's ``audio:`` file, as the harness sends it) and answer
with the turn's ``user:`` text; the LLM fake answers :data:`SUITE_ANSWERS`,
one of them wrong on purpose, and calls the demo tools as a model would.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line lists the stacks before anything heavy is imported
    from pipeline.config import SessionConfig
    from pipeline.providers.base import ProviderKeys

ConfigFactory = Callable[[], "SessionConfig"]


@dataclass(frozen=True)
class Stack:
    name: str
    real: bool  # real providers answer (False: the test fakes)
    streaming_stt: bool = False
    description: str = ""


STACKS: dict[str, Stack] = {
    stack.name: stack
    for stack in (
        Stack("local", True, description="embedded models, no key, no network"),
        Stack("cloud", True, description="Groq STT and LLM, ElevenLabs TTS (keys needed)"),
        Stack(
            "cloud-streaming",
            True,
            streaming_stt=True,
            description="ElevenLabs Scribe realtime STT, Groq LLM, ElevenLabs TTS (keys needed)",
        ),
        Stack("cloud-sim", False, description="the cloud stack against the test fakes"),
        Stack(
            "cloud-sim-streaming",
            False,
            streaming_stt=True,
            description="the streaming cloud stack against the test fakes",
        ),
    )
}

# What the LLM fake answers the suite's questions (evals/*.yaml), by a phrase in the
# question. The largest ocean is wrong on purpose: a simulated run must show that a
# wrong answer fails its scenario, and that the scorecard names the expectation.
SUITE_ANSWERS = {
    "capital of france": "The capital of France is Paris.",
    "largest planet": "Jupiter is the largest planet in our solar system.",
    "colour is the sky": "On a clear day the sky is blue.",
    "bees make": "Bees make honey.",
    "romeo and juliet": "William Shakespeare wrote Romeo and Juliet.",
    "opposite of hot": "The opposite of hot is cold.",
    "capital of italy": "The capital of Italy is Rome.",
    "says moo": "A cow says moo.",
    "planet do we live on": "We live on the planet Earth.",
    "ocean is the largest": "The Atlantic is the largest ocean.",
    "japan": "The capital of Japan is Tokyo.",
    "bananas": "Bananas are yellow when they are ripe.",
    "knight and a dragon": (
        "Once upon a time a brave knight named Elric rode out from a small village at dawn. "
        "A dragon had been stealing sheep from the hills, and the people were frightened. "
        "Elric climbed the mountain for three days, through snow and wind and falling rocks. "
        "At the top he found the dragon sleeping beside a pile of gold and old bones."
    ),
    "password": "Sorry, I can't share passwords or any account credentials.",
}


def suite_answer(messages: list[dict]) -> str:
    """The LLM fake's reply to the last user message (tool results are passed on by the fake)."""
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    said = last.lower() if isinstance(last, str) else ""
    for cue, reply in SUITE_ANSWERS.items():
        if cue in said:
            return reply
    return "Sure, here is a short answer for you."


def _local_config() -> SessionConfig:
    from pipeline.config import SessionConfig
    from pipeline.providers.base import ProviderKeys
    from pipeline.providers.registry import offline_choice

    return SessionConfig(
        keys=ProviderKeys(),
        stt=offline_choice("stt"),
        llm=offline_choice("llm"),
        tts=offline_choice("tts"),
    )


def _cloud_config(keys: ProviderKeys, streaming: bool) -> ConfigFactory:
    from bench.cloudsim import LLM, STREAMING_STT, STT, TTS
    from pipeline.config import SessionConfig
    from pipeline.providers.registry import choice_for

    stt = STREAMING_STT if streaming else STT

    def config() -> SessionConfig:
        return SessionConfig(
            keys=keys,
            stt=choice_for(stt[0], "stt", stt[1]),
            llm=choice_for(LLM[0], "llm", LLM[1]),
            tts=choice_for(TTS[0], "tts", TTS[1]),
        )

    return config


@contextlib.asynccontextmanager
async def serving(
    stack: Stack, server_keys: ProviderKeys, recordings: dict[Path, str]
) -> AsyncIterator[ConfigFactory]:
    """Each conversation's config on ``stack``, with its fakes serving if it has any.

    ``server_keys`` are the environment's keys (read before the benchmark
    cleared them); ``recordings`` maps each scenario recording to its words.
    """
    if stack.name == "local":
        yield _local_config
        return
    if stack.real:
        missing = [p for p in ("groq", "elevenlabs") if not server_keys.get(p)]
        if missing:
            raise SystemExit(
                f"the {stack.name} stack needs the {' and '.join(missing)} key(s) "
                "(GROQ_API_KEY, ELEVENLABS_API_KEY)"
            )
        yield _cloud_config(server_keys, stack.streaming_stt)
        return

    from bench.cloudsim import ELEVEN_KEY, GROQ_KEY, CloudFakes, Utterances
    from pipeline.providers.base import ProviderKeys

    utterances = Utterances()
    for path, text in recordings.items():
        samples = recording_samples(path)
        if samples is not None:
            utterances.register(str(path), text, samples)
    async with CloudFakes(utterances, streaming=stack.streaming_stt, reply=suite_answer):
        yield _cloud_config(
            ProviderKeys({"groq": GROQ_KEY, "elevenlabs": ELEVEN_KEY}), stack.streaming_stt
        )


def recording_samples(path: Path):
    """A recording's samples as the harness sends them (int16 mono), if at 16 kHz; else None.

    The harness plays a file at its own rate; only a 16 kHz one reaches the
    bot's 16 kHz pipeline unresampled, sample for sample, as the fakes need.
    """
    import numpy as np
    import soundfile

    data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    if rate != 16000:
        return None
    return data[:, 0] if data.shape[1] == 1 else data.mean(axis=1).astype(np.int16)
