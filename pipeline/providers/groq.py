"""Groq: Whisper (STT), chat models (LLM) and Orpheus (TTS) over its OpenAI-compatible API.

``GROQ_BASE_URL`` is the API root as the ``groq`` SDK reads it; pipecat's
OpenAI-client services live under ``/openai/v1`` of it. Every client here
fails fast: no automatic retries (a voice turn cannot wait out a back-off) and
no more than :data:`FIRST_BYTE_TIMEOUT_SECS` without a byte from the server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import cast

import httpx
import openai
from openai import AsyncOpenAI, DefaultAsyncHttpxClient
from pipecat.frames.frames import ErrorFrame, Frame
from pipecat.services.groq.llm import GroqLLMService
from pipecat.services.groq.stt import GroqSTTService
from pipecat.services.groq.tts import GroqTTSService, GroqTTSSettings
from pipecat.transcriptions.language import Language
from pipecat.utils.types import assert_given

from pipeline.compat.pipecat import replace_client, service_client, stream_tts_audio
from pipeline.providers.base import Capabilities, Catalog, Provider, Stage
from pipeline.speculation import EagerSegmentsMixin

DEFAULT_BASE_URL = "https://api.groq.com"
BASE_URL_ENV = "GROQ_BASE_URL"
FIRST_BYTE_TIMEOUT_SECS = 10.0
CONNECT_TIMEOUT_SECS = 3.0
# Orpheus on Groq refuses longer input in one request.
TTS_MAX_INPUT_CHARS = 200
# A cloud model writes far faster than it is spoken; the limit only stops runaways.
LLM_MAX_TOKENS = 400

STT_MODELS = ("whisper-large-v3-turbo", "whisper-large-v3")
LLM_MODELS = ("llama-3.1-8b-instant", "llama-3.3-70b-versatile", "openai/gpt-oss-20b")
TTS_MODELS = ("canopylabs/orpheus-v1-english",)
TTS_VOICES = tuple(
    (name.title(), name) for name in ("autumn", "diana", "hannah", "austin", "daniel", "troy")
)


def base_url() -> str:
    return os.environ.get(BASE_URL_ENV, "").strip().rstrip("/") or DEFAULT_BASE_URL


def openai_base_url() -> str:
    return f"{base_url()}/openai/v1"


def _timeout() -> openai.Timeout:
    """For the OpenAI SDK's clients, whose HTTP library is httpx2."""
    return openai.Timeout(FIRST_BYTE_TIMEOUT_SECS, connect=CONNECT_TIMEOUT_SECS)


def _groq_timeout() -> httpx.Timeout:
    """For the Groq SDK's client, whose HTTP library is httpx."""
    return httpx.Timeout(FIRST_BYTE_TIMEOUT_SECS, connect=CONNECT_TIMEOUT_SECS)


class VoiceLabGroqLLMService(GroqLLMService):
    """Groq chat, failing fast instead of retrying (the SDK retries twice by default)."""

    def create_client(
        self,
        api_key=None,
        base_url=None,
        organization=None,
        project=None,
        default_headers=None,
        **kwargs,
    ):
        return AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            default_headers=default_headers,
            timeout=_timeout(),
            max_retries=0,
            http_client=DefaultAsyncHttpxClient(timeout=_timeout()),
        )

    async def cleanup(self):
        await super().cleanup()
        await service_client(self).close()  # pipecat leaves its keep-alive sockets to the GC


class VoiceLabGroqSTTService(EagerSegmentsMixin, GroqSTTService):
    """Groq Whisper, failing fast instead of retrying; transcribes early when the user pauses."""

    def __init__(self, *, api_key: str, **kwargs):
        super().__init__(api_key=api_key, base_url=openai_base_url(), **kwargs)
        replace_client(
            self,
            AsyncOpenAI(
                api_key=api_key, base_url=openai_base_url(), timeout=_timeout(), max_retries=0
            ),
        )

    async def cleanup(self):
        await super().cleanup()
        await service_client(self).close()


class VoiceLabGroqTTSService(GroqTTSService):
    """Groq TTS asked for the pipeline's sample rate, its WAV read as one stream.

    pipecat's ``run_tts`` parses every network chunk as a whole WAV file, which
    only works while a reply fits in one chunk; here the header is stripped once
    and the rest streamed (and resampled if need be) as it arrives.
    """

    def __init__(self, *, api_key: str, **kwargs):
        super().__init__(api_key=api_key, **kwargs)
        from groq import AsyncGroq

        replace_client(
            self,
            AsyncGroq(api_key=api_key, base_url=base_url(), timeout=_groq_timeout(), max_retries=0),
        )

    async def cleanup(self):
        await super().cleanup()
        await service_client(self).close()

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        try:
            await self.start_tts_usage_metrics(text)
            settings = cast(GroqTTSSettings, self.settings)  # typed as the base class's
            model, voice = assert_given(settings.model), assert_given(settings.voice)
            if model is None or voice is None:
                raise ValueError("Groq TTS needs a model and a voice")
            for piece in split_for_speech(text, TTS_MAX_INPUT_CHARS):
                async with service_client(self).audio.speech.with_streaming_response.create(
                    model=model,
                    voice=voice,
                    response_format="wav",
                    sample_rate=self.sample_rate,
                    input=piece,
                ) as response:
                    async for frame in stream_tts_audio(
                        self, response.iter_bytes(), strip_wav_header=True, context_id=context_id
                    ):
                        await self.stop_ttfb_metrics()
                        yield frame
        except Exception as e:
            yield ErrorFrame(error=f"Groq TTS failed: {e}", exception=e)


def split_for_speech(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut between words."""
    pieces: list[str] = []
    current = ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > limit:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return [*pieces, current] if current else pieces


def _stt(choice, key, config, models):
    return VoiceLabGroqSTTService(
        api_key=key, settings=GroqSTTService.Settings(model=choice.model, language=Language.EN)
    )


def _llm(choice, key, config, models):
    settings = VoiceLabGroqLLMService.Settings(
        model=choice.model,
        system_instruction=config.system_prompt,
        max_completion_tokens=LLM_MAX_TOKENS,
    )
    if choice.model.startswith("openai/gpt-oss"):
        # Reasoning is time before the first spoken word: keep it short.
        settings.reasoning_effort = "low"
    return VoiceLabGroqLLMService(api_key=key, base_url=openai_base_url(), settings=settings)


def _tts(choice, key, config, models):
    return VoiceLabGroqTTSService(
        api_key=key, settings=GroqTTSService.Settings(model=choice.model, voice=choice.voice)
    )


def classify_models(model_ids: list[str]) -> dict[Stage, tuple[str, ...]]:
    """Sort Groq's model list into stages by name (the API does not say which is which)."""
    stt = [m for m in model_ids if "whisper" in m]
    tts = [m for m in model_ids if "orpheus" in m or m.endswith("-tts")]
    not_chat = ("guard", "distil", "compound", "arabic", "saudi")
    llm = [m for m in model_ids if m not in stt + tts and not any(w in m for w in not_chat)]
    return {"stt": tuple(stt), "llm": tuple(llm), "tts": tuple(tts)}


def _preferred_first(live: tuple[str, ...], built_in: tuple[str, ...]) -> tuple[str, ...]:
    """The live list, with the built-in defaults (fastest first) leading where present."""
    leading = [m for m in built_in if m in live]
    return tuple(leading + sorted(m for m in live if m not in leading))


async def fetch_catalogs(key: str) -> dict[Stage, Catalog]:
    from groq import AsyncGroq

    async with AsyncGroq(api_key=key, base_url=base_url(), timeout=3.0, max_retries=0) as client:
        listed = await client.models.list()
    ids = [m.id for m in listed.data if getattr(m, "active", True) is not False]
    by_stage = classify_models(ids)
    return {
        stage: Catalog(
            _preferred_first(by_stage[stage], PROVIDER.catalogs[stage].models)
            or PROVIDER.catalogs[stage].models,
            PROVIDER.catalogs[stage].voices,
        )
        for stage in PROVIDER.stages
    }


PROVIDER = Provider(
    id="groq",
    label="Groq",
    key_env="GROQ_API_KEY",
    base_url_env=BASE_URL_ENV,
    catalogs={
        "stt": Catalog(STT_MODELS),
        "llm": Catalog(LLM_MODELS),
        "tts": Catalog(TTS_MODELS, voices=TTS_VOICES),
    },
    factories={"stt": _stt, "llm": _llm, "tts": _tts},
    fetch_catalogs=fetch_catalogs,
    # Its chat models call tools (OpenAI-style function calling). Its Whisper is
    # segmented: one transcript once the user stops, none while they speak; Orpheus
    # returns audio without word timings.
    capabilities={"llm": Capabilities(tools=True)},
    # The fastest path for a voice agent: Groq's Whisper and LLM first; its voice
    # after ElevenLabs Flash, which highlights word by word.
    default_rank={"stt": 1, "llm": 1, "tts": 2},
)
