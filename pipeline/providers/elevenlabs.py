"""ElevenLabs: Flash/Turbo TTS over the input-streaming WebSocket, Scribe realtime STT.

``ELEVENLABS_BASE_URL`` is the REST root (``https://api.elevenlabs.io``); the
TTS WebSocket is the same host with a ``ws(s)`` scheme, and pipecat's realtime
STT takes the bare ``host[:port]`` and always speaks ``wss://``.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import httpx
from pipecat.frames.frames import VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame
from pipecat.services.elevenlabs.stt import CommitStrategy, ElevenLabsRealtimeSTTService
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService

from pipeline.providers import Catalog, Provider, Stage

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
BASE_URL_ENV = "ELEVENLABS_BASE_URL"
# No committed transcript this long after the user stopped: the service is stuck.
TRANSCRIPT_TIMEOUT_SECS = 10.0

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
    return os.environ.get(BASE_URL_ENV, "").strip().rstrip("/") or DEFAULT_BASE_URL


def websocket_url() -> str:
    parts = urlsplit(base_url())
    scheme = "ws" if parts.scheme == "http" else "wss"
    return f"{scheme}://{parts.netloc}"


def websocket_host() -> str:
    return urlsplit(base_url()).netloc


class ReportsDroppedConnection:
    """Say so when the websocket drops mid-turn; pipecat reconnects silently, losing the turn.

    Also keeps the reason the server gave when it closed the socket ("1008
    Invalid API key"): pipecat's later reconnection errors say only that
    verification failed, and the reason is what tells a visitor what to fix.
    """

    _server_close_reason = ""

    def _mid_turn(self) -> bool:
        return True

    async def _on_dropped_mid_turn(self) -> None:
        """What else to do about the lost turn, besides saying so."""

    def _note_close(self, closed) -> None:
        if closed is not None and closed.code != 1000:
            self._server_close_reason = f"{closed.code} {closed.reason}".strip()

    async def _verify_connection(self) -> bool:
        verified = await super()._verify_connection()
        if not verified:
            self._note_close(getattr(self._websocket, "close_rcvd", None))
        return verified

    async def _maybe_try_reconnect(self, error_message, report_error, error=None):
        self._note_close(getattr(error, "rcvd", None))
        if not self._disconnecting and self._mid_turn():
            await self.push_error(f"connection dropped: {error_message}", exception=error)
            await self._on_dropped_mid_turn()
        return await super()._maybe_try_reconnect(error_message, report_error, error)

    async def push_error_frame(self, error, *args, **kwargs):
        reason = self._server_close_reason
        if reason and reason not in error.error:
            error.error = f"{error.error} (the server closed the connection: {reason})"
        await super().push_error_frame(error, *args, **kwargs)


class VoiceLabElevenLabsTTSService(ReportsDroppedConnection, ElevenLabsTTSService):
    """ElevenLabs TTS that abandons a reply whose connection dropped.

    The rest of the reply was sent on the lost socket and will never be
    voiced, so the turn is ended like a barge-in: what is queued stops playing
    and the context keeps only what was heard.
    """

    def _mid_turn(self) -> bool:
        return self.has_active_audio_context()

    async def _on_dropped_mid_turn(self) -> None:
        await self.broadcast_interruption()


class VoiceLabElevenLabsSTTService(ReportsDroppedConnection, ElevenLabsRealtimeSTTService):
    """Scribe realtime, reporting a commit that is never answered.

    pipecat waits for the committed transcript forever; a stalled service
    would leave the user's turn hanging with no word on screen.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._awaiting_transcript: asyncio.Task | None = None
        self._hearing = False

    def _mid_turn(self) -> bool:
        return self._hearing or self._awaiting_transcript is not None

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._hearing = True
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._hearing = False
            if self._awaiting_transcript is None:
                self._awaiting_transcript = self.create_task(self._transcript_overdue())

    async def _transcript_overdue(self) -> None:
        await asyncio.sleep(TRANSCRIPT_TIMEOUT_SECS)
        self._awaiting_transcript = None
        await self.push_error("no transcript: the request timed out")

    async def _process_response(self, data: dict):
        if data.get("message_type") != "partial_transcript":
            await self._stop_waiting()
        await super()._process_response(data)

    async def _stop_waiting(self) -> None:
        if self._awaiting_transcript is not None:
            task, self._awaiting_transcript = self._awaiting_transcript, None
            await self.cancel_task(task)

    async def cleanup(self):
        await self._stop_waiting()
        await super().cleanup()


def _stt(choice, key, config, models):
    return VoiceLabElevenLabsSTTService(
        api_key=key,
        base_url=websocket_host(),
        # Our Silero VAD and Smart Turn decide when the user is done; Scribe
        # commits the transcript when told.
        commit_strategy=CommitStrategy.MANUAL,
        settings=VoiceLabElevenLabsSTTService.Settings(model=choice.model),
    )


def _tts(choice, key, config, models):
    return VoiceLabElevenLabsTTSService(
        api_key=key,
        url=websocket_url(),
        settings=VoiceLabElevenLabsTTSService.Settings(model=choice.model, voice=choice.voice),
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
    key_env="ELEVENLABS_API_KEY",
    base_url_env=BASE_URL_ENV,
    catalogs={"stt": Catalog(STT_MODELS), "tts": Catalog(TTS_MODELS, voices=TTS_VOICES)},
    factories={"stt": _stt, "tts": _tts},
    fetch_catalogs=fetch_catalogs,
    word_timing=True,
)
