"""ElevenLabs: Flash/Turbo TTS over the input-streaming WebSocket, Scribe realtime STT.

``ELEVENLABS_BASE_URL`` is the REST root (``https://api.elevenlabs.io``); the
TTS WebSocket is the same host with a ``ws(s)`` scheme, and pipecat's realtime
STT takes the bare ``host[:port]`` and always speaks ``wss://``.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import httpx
from pipecat.services.elevenlabs.stt import CommitStrategy, ElevenLabsRealtimeSTTService
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

from pipeline.providers import Catalog, Provider, Stage

DEFAULT_BASE_URL = "https://api.elevenlabs.io"

TTS_MODELS = ("eleven_flash_v2_5", "eleven_turbo_v2_5", "eleven_multilingual_v2")
STT_MODELS = ("scribe_v2_realtime",)
# Premade voices every account has.
TTS_VOICES = (
    ("Rachel", "21m00Tcm4TlvDq8ikWAM"),
    ("George", "JBFqnCBsd6RMkjVDRZzb"),
    ("Sarah", "EXAVITQu4vr4xnSDxMaL"),
    ("Adam", "pNInz6obpgDQGcFmaJgB"),
)


def base_url() -> str:
    return os.environ.get("ELEVENLABS_BASE_URL", "").strip().rstrip("/") or DEFAULT_BASE_URL


def websocket_url() -> str:
    parts = urlsplit(base_url())
    scheme = "ws" if parts.scheme == "http" else "wss"
    return f"{scheme}://{parts.netloc}"


def websocket_host() -> str:
    return urlsplit(base_url()).netloc


def _stt(choice, key, config, models):
    return ElevenLabsRealtimeSTTService(
        api_key=key,
        base_url=websocket_host(),
        # Our Silero VAD and Smart Turn decide when the user is done; Scribe
        # commits the transcript when told.
        commit_strategy=CommitStrategy.MANUAL,
        settings=ElevenLabsRealtimeSTTService.Settings(model=choice.model),
    )


def _tts(choice, key, config, models):
    return ElevenLabsTTSService(
        api_key=key,
        url=websocket_url(),
        settings=ElevenLabsTTSService.Settings(model=choice.model, voice=choice.voice),
    )


async def fetch_catalogs(key: str) -> dict[Stage, Catalog]:
    headers = {"xi-api-key": key}
    async with httpx.AsyncClient(base_url=base_url(), headers=headers, timeout=3.0) as client:
        voices_response = await client.get("/v1/voices")
        voices_response.raise_for_status()
        models_response = await client.get("/v1/models")
        models_response.raise_for_status()
    voices = tuple(
        (v.get("name") or v["voice_id"], v["voice_id"]) for v in voices_response.json()["voices"]
    )
    listed = [m["model_id"] for m in models_response.json() if m.get("can_do_text_to_speech")]
    # Keep the low-latency models first, in our order.
    tts_models = tuple(m for m in TTS_MODELS if m in listed) + tuple(
        m for m in listed if m not in TTS_MODELS
    )
    return {
        "tts": Catalog(tts_models or TTS_MODELS, voices or TTS_VOICES),
        "stt": PROVIDER.catalogs["stt"],
    }


PROVIDER = Provider(
    id="elevenlabs",
    label="ElevenLabs",
    tag="11labs",
    key_env="ELEVENLABS_API_KEY",
    catalogs={"stt": Catalog(STT_MODELS), "tts": Catalog(TTS_MODELS, voices=TTS_VOICES)},
    factories={"stt": _stt, "tts": _tts},
    fetch_catalogs=fetch_catalogs,
)
