"""The harness's own services, made from what runs here: its ears, the user's voice, the judge.

pipecat's eval harness builds the services a scenario names (Kokoro for the
user's voice, Moonshine or Whisper for the bot's speech, an Ollama judge),
downloading their weights on first use. We hand it ours instead, so any
scenario runs unchanged and offline:

- :class:`HarnessEars`: the embedded Whisper (a model instance of its own, so
  the harness never queues behind the bot's transcriptions) transcribing the
  bot's speech for ``response`` expectations, and noting when each reply
  became audible to the harness, for the heard-minus-server figure;
- :func:`user_voice`: the embedded Piper voice, cached the harness's way, for
  turns given as text with a ``user.speech:`` block rather than a recording;
- :func:`judge_from_settings`: an OpenAI-compatible judge (Groq with a key, or
  any base URL) for ``eval:`` criteria, or none: the harness then reports
  those expectations as failed with kind ``no_judge``, which the scorecard
  calls "not judged", never passed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np
from pipecat.evals.judge import EvalJudge
from pipecat.evals.tts import CachingTTSService
from pipecat.frames.frames import Frame, InputAudioRawFrame, TranscriptionFrame
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601

from pipeline.providers.local.models import WHISPER_LABEL, LocalModels

# Peak below this (int16) is silence between replies, not speech.
AUDIBLE = 300
# Quiet at least this long before a sound makes that sound a new reply's onset.
ONSET_AFTER_QUIET_SECS = 0.3


class HarnessEars(SegmentedSTTService):
    """The harness's transcription of the bot's audio, and when each reply was first heard.

    ``onsets`` holds the wall-clock time (``time.time()``, the clock the
    bot's events use) of the first audible sample of every stretch of the
    bot's speech that followed a quiet spell: the audio arrives paced in real
    time, so that is when a listener at the harness heard it.
    """

    def __init__(self, models: LocalModels, *, transcribe: bool = True):
        super().__init__(
            settings=STTSettings(model=WHISPER_LABEL, language=Language.EN),
            trailing_silence_secs=0.3,
        )
        self._models = models
        self._transcribe = transcribe
        self.onsets: list[float] = []
        self._heard_until = 0.0

    @property
    def wants_wav_segments(self) -> bool:
        """The embedded Whisper reads raw 16-bit PCM."""
        return False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, InputAudioRawFrame):
            self._listen(frame)
        await super().process_frame(frame, direction)

    def _listen(self, frame: InputAudioRawFrame) -> None:
        now = time.time()
        samples = np.frombuffer(frame.audio, dtype=np.int16)
        loud = np.flatnonzero(np.abs(samples) > AUDIBLE)
        if not len(loud):
            return
        rate = frame.sample_rate * frame.num_channels
        first, last = now + loud[0] / rate, now + loud[-1] / rate
        if first - self._heard_until >= ONSET_AFTER_QUIET_SECS:
            self.onsets.append(first)
        self._heard_until = last

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        if not self._transcribe:
            return
        text = await asyncio.to_thread(self._models.transcribe, audio, self.sample_rate)
        if text:
            yield TranscriptionFrame(text, "", time_now_iso8601(), Language.EN)


def user_voice(models: LocalModels, speech: dict, cache_dir: str | None) -> CachingTTSService:
    """The user's voice for turns without a recording: the embedded Piper, cached per text.

    Whatever voice the scenario names (Kokoro voices, a factory) is spoken
    by Piper here; its sample rate is kept, since the harness paces the
    audio at it.
    """
    from pipeline.providers.local.services import LocalPiperTTSService

    cache_key = "\x00".join(("voice-lab-piper", "en_US-joe-medium", str(speech.get("speed", ""))))
    return CachingTTSService(
        LocalPiperTTSService(models=models), cache_key=cache_key, cache_dir=cache_dir
    )


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge LLM is: an OpenAI-compatible ``base_url`` and ``model`` (and key)."""

    base_url: str
    model: str
    api_key: str = ""

    @property
    def label(self) -> str:
        return f"{self.model} at {self.base_url}"


DEFAULT_GROQ_JUDGE_MODEL = "llama-3.3-70b-versatile"


def judge_settings(groq_key: str | None = None) -> JudgeSettings | None:
    """The judge from the environment, or None (``eval:`` criteria are then "not judged").

    ``VOICE_LAB_EVAL_JUDGE_URL`` names any OpenAI-compatible server (with
    ``VOICE_LAB_EVAL_JUDGE_MODEL`` and, if it needs one, ``VOICE_LAB_EVAL_JUDGE_KEY``);
    without it, a Groq key makes Groq the judge (``VOICE_LAB_EVAL_JUDGE_MODEL``,
    default ``llama-3.3-70b-versatile``).
    """
    from pipeline.providers import groq

    model = os.environ.get("VOICE_LAB_EVAL_JUDGE_MODEL", "").strip()
    url = os.environ.get("VOICE_LAB_EVAL_JUDGE_URL", "").strip().rstrip("/")
    if url:
        if not model:
            raise ValueError("VOICE_LAB_EVAL_JUDGE_URL needs VOICE_LAB_EVAL_JUDGE_MODEL too")
        return JudgeSettings(url, model, os.environ.get("VOICE_LAB_EVAL_JUDGE_KEY", "").strip())
    if groq_key:
        return JudgeSettings(groq.openai_base_url(), model or DEFAULT_GROQ_JUDGE_MODEL, groq_key)
    return None


def judge_llm(settings: JudgeSettings):
    """The judge's LLM as a pipecat service (OpenAI-compatible, any base URL)."""
    from pipecat.services.openai.llm import OpenAILLMService

    return OpenAILLMService(
        api_key=settings.api_key or "not-needed",
        base_url=settings.base_url,
        settings=OpenAILLMService.Settings(model=settings.model),
    )


def make_judge(settings: JudgeSettings | None) -> EvalJudge | None:
    """A fresh judge for one scenario (it keeps that conversation), or None."""
    if settings is None:
        return None
    from pipecat.classifiers.llm.classifier import LLMClassifier

    return EvalJudge(LLMClassifier(llm=judge_llm(settings)), explainer=judge_llm(settings))
