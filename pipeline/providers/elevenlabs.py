"""ElevenLabs: Flash/Turbo TTS over the input-streaming WebSocket, Scribe realtime STT.

``ELEVENLABS_BASE_URL`` is the REST root (``https://api.elevenlabs.io``); the
TTS WebSocket is the same host with a ``ws(s)`` scheme, and pipecat's realtime
STT takes the bare ``host[:port]`` and always speaks ``wss://``.
"""

from __future__ import annotations

import asyncio
import json
import os
from urllib.parse import urlsplit

import httpx
from pipecat.frames.frames import VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame
from pipecat.services.elevenlabs.stt import CommitStrategy
from pipecat.services.tts_service import TextAggregationMode

from pipeline.compat.pipecat import ElevenLabsRealtimeSTT, ElevenLabsTTS
from pipeline.providers.base import Capabilities, Catalog, Provider, Stage
from pipeline.providers.websocket import ReportsDroppedConnection

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
BASE_URL_ENV = "ELEVENLABS_BASE_URL"
# No committed transcript this long after the user stopped: the service is stuck.
TRANSCRIPT_TIMEOUT_SECS = 10.0
# The voice and model lists: past this, the built-in ones.
CATALOG_TIMEOUT_SECS = 3.0

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


class VoiceLabElevenLabsTTSService(ReportsDroppedConnection, ElevenLabsTTS):
    """ElevenLabs TTS fed the LLM's tokens as they stream, generating from the first phrase.

    The websocket takes text in pieces, so nothing waits for a whole clause
    here: each token goes out as it arrives (pipecat's ``TOKEN`` aggregation).
    ElevenLabs then generates when told to (``flush``), or once 120 characters
    are buffered (its default chunk schedule); so a flush follows the first
    phrase of a reply (a clause or sentence end after a few words, or
    ``FIRST_FLUSH_WORDS`` words) and then each sentence end. The text flushed
    stays in the same context, so the voice carries its prosody across.

    A reply whose connection dropped is abandoned: the rest of it was sent on
    the lost socket and will never be voiced, so the turn is ended like a
    barge-in (what is queued stops playing, the context keeps what was heard).
    """

    def __init__(self, **kwargs):
        super().__init__(text_aggregation_mode=TextAggregationMode.TOKEN, auto_mode=False, **kwargs)
        # Per context: text sent since the last flush, and whether one was sent.
        self._unflushed: dict[str, str] = {}
        self._flushed: set[str] = set()

    async def send_text(self, text: str, context_id: str):
        if not (self.websocket and context_id):
            return
        pending = self._unflushed.get(context_id, "")
        if text[:1].isspace() and _long_first_phrase(pending, first=self._first(context_id)):
            await self._flush(context_id)  # a word just ended the first phrase
            pending = ""
        await super().send_text(text, context_id)
        pending += text
        if _phrase_ends(pending, first=self._first(context_id)):
            await self._flush(context_id)
            pending = ""
        self._unflushed[context_id] = pending
        if len(self._unflushed) > 8:  # contexts of replies long over
            for stale in list(self._unflushed)[:-8]:
                self._unflushed.pop(stale, None)
                self._flushed.discard(stale)

    def _first(self, context_id: str) -> bool:
        return context_id not in self._flushed

    async def _flush(self, context_id: str) -> None:
        if self.websocket is None:  # the connection dropped while the text went out
            return
        await self.websocket.send(json.dumps({"context_id": context_id, "flush": True}))
        self._flushed.add(context_id)

    def _mid_turn(self) -> bool:
        return self.has_active_audio_context()

    async def _on_dropped_mid_turn(self) -> None:
        await self.broadcast_interruption()


class VoiceLabElevenLabsSTTService(ReportsDroppedConnection, ElevenLabsRealtimeSTT):
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

    async def on_response(self, data: dict):
        if data.get("message_type") != "partial_transcript":
            await self._stop_waiting()
        await super().on_response(data)

    async def _stop_waiting(self) -> None:
        if self._awaiting_transcript is not None:
            task, self._awaiting_transcript = self._awaiting_transcript, None
            await self.cancel_task(task)

    async def cleanup(self):
        await self._stop_waiting()
        await super().cleanup()


FIRST_FLUSH_WORDS = 6
_SENTENCE_END = (".", "!", "?")
_CLAUSE_END = (",", ";", ":", *_SENTENCE_END)


def _phrase_ends(pending: str, *, first: bool) -> bool:
    """The first phrase ends at a clause or sentence end after three words; later, at sentences."""
    text = pending.rstrip()
    if first:
        return text.endswith(_CLAUSE_END) and len(text.split()) >= 3
    return text.endswith(_SENTENCE_END)


def _long_first_phrase(pending: str, *, first: bool) -> bool:
    """A first phrase with no punctuation yet is cut after ``FIRST_FLUSH_WORDS`` whole words."""
    return first and len(pending.split()) >= FIRST_FLUSH_WORDS


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
    """The account's voices and the text-to-speech models, through the ``elevenlabs`` SDK.

    No retries (the SDK retries 429 and 5xx twice by default, with back-off):
    a list that is not there within :data:`CATALOG_TIMEOUT_SECS` falls back to
    the built-in one. The HTTP client is ours so that its sockets are closed.
    The SDK's own request log stays off (its default): at debug it would put the
    ``xi-api-key`` header, unmasked, in each record's extra fields.
    """
    from elevenlabs import AsyncElevenLabs

    once = {"max_retries": 0}
    async with httpx.AsyncClient(timeout=CATALOG_TIMEOUT_SECS) as http:
        client = AsyncElevenLabs(
            base_url=base_url(), api_key=key, timeout=CATALOG_TIMEOUT_SECS, httpx_client=http
        )
        listed_voices = await client.voices.get_all(request_options=once)
        listed_models = await client.models.list(request_options=once)
    voices = tuple((v.name or v.voice_id, v.voice_id) for v in listed_voices.voices)
    listed = [m.model_id for m in listed_models if m.can_do_text_to_speech]
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
    # Scribe realtime streams partial transcripts; the TTS websocket sends
    # character timings, from which each word's start is known.
    capabilities={
        "stt": Capabilities(interim_text=True, streaming=True),
        "tts": Capabilities(word_timing=True, streamed_text=True),
    },
    # Flash with word timing is the fastest voice; Scribe comes after Groq's Whisper.
    default_rank={"stt": 2, "tts": 1},
)
