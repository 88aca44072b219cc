"""A fake of the ElevenLabs API on 127.0.0.1, over TLS (https and wss on one port).

Built from ElevenLabs' published API reference (the AsyncAPI specs of the
multi-context TTS websocket and the realtime speech-to-text websocket, the
OpenAPI of ``/v1/voices`` and ``/v1/models``) and from what the real service is
reported to do where the reference is silent (close codes and reasons seen in
client logs). It serves:

* ``GET /v1/voices``, ``GET /v1/voices/{voice_id}``, ``GET /v1/models``
* ``wss /v1/text-to-speech/{voice_id}/multi-stream-input`` (multi-context TTS)
* ``wss /v1/text-to-speech/{voice_id}/stream-input`` (single-context TTS)
* ``POST /v1/text-to-speech/{voice_id}/stream`` (TTS of a whole text, audio streamed back)
* ``wss /v1/speech-to-text/realtime`` (Scribe realtime)

Wire behaviour, as documented:

TTS (multi-context). Auth by the ``xi-api-key`` header, the ``authorization``
query parameter, or ``xi_api_key``/``authorization`` in a context's first
message. Query: ``model_id``, ``output_format`` (``pcm_*`` only here),
``auto_mode``, ``inactivity_timeout`` (default 20, max 180), ``sync_alignment``,
``language_code``, ``enable_logging``, ``enable_ssml_parsing``,
``apply_text_normalization``, ``seed``. Client messages: ``{"text": " ",
"voice_settings", "context_id"}`` opens a context (any message naming an
unknown context opens one, which is how a stray flush leaks a context),
``{"text", "context_id", "flush"?}``, ``{"flush": true, "context_id"}``,
``{"close_context": true, "context_id"}``, ``{"text": "", "context_id"}``
(keep-alive) and ``{"close_socket": true}``. Server messages: ``{"audio":
base64, "alignment", "normalizedAlignment", "contextId"}`` with alignment
``{"chars", "charStartTimesMs", "charDurationsMs"}`` relative to the chunk, and
``{"isFinal": true, "contextId"}`` once a closed context has finished.
Audio is generated on ``flush``, on sentence punctuation with ``auto_mode``,
or once 120 characters are buffered (the default ``chunk_length_schedule``).
A context holds its slot until its ``isFinal`` is sent (a closed context keeps
flushing what was already sent for generation). At most five contexts per
connection: opening a sixth sends ``{"message", "error":
"max_active_conversations", "code": 1008}`` and closes the socket with 1008.
``voice_settings`` may only be given in a context's first message (or
repeated unchanged), else 1008. No text for ``inactivity_timeout`` seconds
closes the socket with 1008.

TTS (HTTP stream). Auth by the ``xi-api-key`` header. Query ``output_format``
(default ``mp3_44100_128``; ``pcm_*`` only here); JSON body ``{"text",
"model_id" (default eleven_multilingual_v2), "voice_settings"...}``. The audio
is the response body, sent in chunks as it is generated; its first chunk comes
``tts_first_audio`` after the request. Errors are REST errors (401, 404 for an
unknown voice, 422 for a body without text or a bad model or format).

STT (realtime). Auth by ``xi-api-key`` header. Query: ``model_id`` (required),
``audio_format``, ``commit_strategy`` (manual/vad), ``vad_silence_threshold_secs``
(0.3-3.0, default 1.5), ``vad_threshold`` (0.1-0.9), ``min_speech_duration_ms``
and ``min_silence_duration_ms`` (50-2000), ``include_timestamps``,
``include_language_detection``, ``language_code``, ``keyterms``... Sends
``session_started`` with the ``config`` on connect; takes ``{"message_type":
"input_audio_chunk", "audio_base_64", "commit", "sample_rate",
"previous_text"?}``; sends ``partial_transcript`` while speech arrives (lagging the
speech, every 300 ms of it) and one more with every word once 100 ms of silence follow
(the recognizer has heard the end of the speech),
``committed_transcript`` after a commit (manual, or its own VAD after
``vad_silence_threshold_secs`` of silence) and, with timestamps or language
detection on, ``committed_transcript_with_timestamps``. Errors are a message
``{"message_type": <auth_error|rate_limited|error|input_error|...>, "error"}``
followed by the close of the socket.

REST errors have ElevenLabs' shape: ``{"detail": {"status": "invalid_api_key",
"message": "Invalid API key"}}`` with 401, and so on.

What is *not* documented and is a best guess (kept in one place, below): the
TTS socket refuses a bad key by accepting the handshake and closing with 1008
"Invalid API key" (what client logs show); server errors close it with 1008
"We are sorry, something went wrong. You are not charged for this request.";
the realtime STT socket closes with 1008 after auth/quota/rate errors and with
1011 after a server error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import random
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from testkit.fakes.common import Latency, ProviderFake, speech_like_pcm
from testkit.fakes.tls import certificate_pair, server_ssl_context

DEFAULT_TRANSCRIPT = "What is the weather like in Paris today?"
NO_DELAY = Latency()  # the same as ``Latency()``: no delay

ENDPOINTS = ("tts", "stt", "voices", "models")

# --- What the real service says (documented or observed) -------------------------------------

INVALID_KEY = {"status": "invalid_api_key", "message": "Invalid API key"}
MISSING_KEY = {
    "status": "needs_authorization",
    "message": "Neither authorization header nor xi-api-key received, please provide one.",
}
REST_ERRORS: dict[str, tuple[int, dict[str, str]]] = {
    "401": (401, INVALID_KEY),
    "429": (
        429,
        {
            "status": "too_many_concurrent_requests",
            "message": "Too many concurrent requests. Your current subscription is associated "
            "with a maximum of 2 concurrent requests.",
        },
    ),
    "500": (
        500,
        {
            "status": "internal_server_error",
            "message": "We are sorry, something went wrong. You are not charged for this request.",
        },
    ),
    "503": (
        503,
        {
            "status": "service_unavailable",
            "message": "The service is temporarily unavailable, please try again later.",
        },
    ),
}

MAX_CONTEXTS_MESSAGE = (
    "Maximum simultaneous contexts per WebSocket connection exceeded ({n}). "
    "Please close an existing context before opening a new one."
)
VOICE_SETTINGS_MESSAGE = (
    "voice_settings field must be provided in the first message and then either be not "
    "provided or not change."
)
INACTIVITY_MESSAGE = (
    "Have not received a new text input within the timeout of {n} seconds. Streaming input "
    "terminated. Please make sure to either feed the input in the timely manner, or to send "
    'the end of input text (empty string "") when done.'
)
TTS_WS_ERRORS: dict[str, tuple[str, str]] = {
    # mode -> (error code in the JSON message, human message / close reason)
    "429": (
        "too_many_concurrent_requests",
        "Too many concurrent requests for your subscription.",
    ),
    "500": (
        "internal_server_error",
        "We are sorry, something went wrong. You are not charged for this request.",
    ),
    "503": ("system_busy", "The system is experiencing heavy traffic, please try again later."),
}
STT_WS_ERRORS: dict[str, tuple[str, str, int]] = {
    # mode -> (message_type, error text, close code)
    "401": ("auth_error", "Invalid API key", 1008),
    "429": (
        "rate_limited",
        "You are rate limited. Please reduce the amount of requests made in a short period.",
        1008,
    ),
    "500": ("error", "An internal server error occurred.", 1011),
    "503": (
        "resource_exhausted",
        "Server resources are at capacity. Please try again later.",
        1011,
    ),
}

PCM_RATES = {f"pcm_{r}": r for r in (8000, 16000, 22050, 24000, 32000, 44100, 48000)}
TTS_OUTPUT_FORMATS = {
    *PCM_RATES,
    "mp3_22050_32",
    "mp3_44100_32",
    "mp3_44100_64",
    "mp3_44100_96",
    "mp3_44100_128",
    "mp3_44100_192",
    "ulaw_8000",
    "alaw_8000",
    "opus_48000_32",
    "opus_48000_64",
    "opus_48000_96",
    "opus_48000_128",
    "opus_48000_192",
}
STT_AUDIO_FORMATS = {f"pcm_{r}": r for r in (8000, 16000, 22050, 24000, 44100, 48000)} | {
    "ulaw_8000": 8000
}
STT_MODELS = {"scribe_v2_realtime", "scribe_v1_experimental"}
# Models the multi-context websocket refuses (documented: not available for eleven_v3).
NO_MULTI_CONTEXT_MODELS = {"eleven_v3"}
CHUNK_LENGTH_SCHEDULE_FIRST = 120
SENTENCE_END = re.compile(r"[.!?;:。！？]\s*$")


def _default_voices() -> list[dict[str, Any]]:
    def voice(voice_id: str, name: str, gender: str, accent: str, description: str):
        return {
            "voice_id": voice_id,
            "name": name,
            "category": "premade",
            "labels": {
                "accent": accent,
                "description": description,
                "age": "young",
                "gender": gender,
                "use_case": "conversational",
            },
            "description": None,
            "preview_url": None,
            "available_for_tiers": [],
            "settings": None,
            "high_quality_base_model_ids": ["eleven_flash_v2_5", "eleven_multilingual_v2"],
            "samples": None,
            "fine_tuning": None,
            "sharing": None,
            "is_owner": False,
            "is_legacy": False,
        }

    return [
        voice("21m00Tcm4TlvDq8ikWAM", "Rachel", "female", "american", "calm"),
        voice("EXAVITQu4vr4xnSDxMaL", "Sarah", "female", "american", "soft"),
        voice("JBFqnCBsd6RMkjVDRZzb", "George", "male", "british", "warm"),
    ]


def _default_models() -> list[dict[str, Any]]:
    english = [{"language_id": "en", "name": "English"}]

    def model(model_id: str, name: str, tts: bool, description: str, max_len: int):
        return {
            "model_id": model_id,
            "name": name,
            "can_be_finetuned": True,
            "can_do_text_to_speech": tts,
            "can_do_voice_conversion": False,
            "can_use_style": model_id == "eleven_multilingual_v2",
            "can_use_speaker_boost": True,
            "serves_pro_voices": False,
            "token_cost_factor": 0.5 if "flash" in model_id or "turbo" in model_id else 1.0,
            "description": description,
            "requires_alpha_access": False,
            "max_characters_request_free_user": 2500,
            "max_characters_request_subscribed_user": 5000,
            "maximum_text_length_per_request": max_len,
            "languages": english,
            "model_rates": {"character_cost_multiplier": 0.5},
            "concurrency_group": "standard",
        }

    return [
        model("eleven_flash_v2_5", "Eleven Flash v2.5", True, "Ultra low latency", 40000),
        model("eleven_turbo_v2_5", "Eleven Turbo v2.5", True, "Low latency", 40000),
        model("eleven_multilingual_v2", "Eleven Multilingual v2", True, "Most lifelike", 10000),
        model("eleven_flash_v2", "Eleven Flash v2", True, "English only", 30000),
        model("eleven_v3", "Eleven v3", True, "Most expressive", 5000),
    ]


def _parse_bool(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _redact(message: dict[str, Any]) -> dict[str, Any]:
    """A client message as recorded: never the key, audio replaced by its size."""
    out = {k: v for k, v in message.items() if k not in ("xi_api_key", "authorization")}
    if isinstance(out.get("audio_base_64"), str):
        raw = out.pop("audio_base_64")
        try:
            out["audio_bytes"] = len(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            out["audio_bytes"] = None
    return out


def _rms(samples: np.ndarray) -> float:
    if samples.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


@dataclass
class _TTSContext:
    context_id: str
    voice_settings: dict[str, Any] | None
    buffer: str = ""
    closing: bool = False
    finished: bool = False
    first_audio_pending: bool = True
    last_generation: asyncio.Task | None = None
    generations: set[asyncio.Task] = field(default_factory=set)


@dataclass
class _TTSConnection:
    """Contexts of one TTS connection: open ones by id, and closed ones still finishing."""

    request: web.Request
    ws: web.WebSocketResponse
    rate: int = 24000
    failing: str | None = None
    active: dict[str, _TTSContext] = field(default_factory=dict)
    closing: list[_TTSContext] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.active) + len(self.closing)

    def all(self) -> list[_TTSContext]:
        return [*self.active.values(), *self.closing]


class _SocketClosed(Exception):
    """The fake closed (or dropped) the websocket; stop handling it."""


class FakeElevenLabs(ProviderFake):
    """The ElevenLabs API on 127.0.0.1 over TLS; see the module docstring.

    Failures (:meth:`fail`) on the websockets (``tts``, ``stt``) apply per
    connection: "401" refuses the key as ElevenLabs does, "429"/"500"/"503"
    answer with the documented error message and close, "hang" accepts and
    never answers, "drop" starts answering (audio, partials) then cuts the
    connection without a close frame.
    """

    provider = "elevenlabs"
    endpoints = ENDPOINTS

    def __init__(
        self,
        *,
        api_key: str = "el_fake_valid_key",
        seed: int = 0,
        tts_first_audio: Latency = NO_DELAY,
        stt_final: Latency = NO_DELAY,
        transcript: Callable[[bytes], str] | None = None,
        max_contexts: int = 5,
        voices: list[dict[str, Any]] | None = None,
        models: list[dict[str, Any]] | None = None,
        tts_speed: float | None = 10.0,
        port: int = 0,
    ):
        """Configure the fake.

        Args:
            api_key: The one key the fake accepts.
            seed: Seeds the latency draws.
            tts_first_audio: Delay from a generation trigger (flush, auto-mode
                sentence end, 120 buffered characters) to its first audio message.
            stt_final: Delay from a commit (manual or VAD) to its committed transcript.
            transcript: Turns one utterance's 16-bit mono PCM into text; by
                default every utterance is ``DEFAULT_TRANSCRIPT``. Also called on
                the audio heard so far to build partial transcripts.
            max_contexts: Simultaneous TTS contexts allowed per connection.
            voices: ``/v1/voices`` entries (``voice_id``, ``name``, ...).
            models: ``/v1/models`` entries (``model_id``, ...).
            tts_speed: Seconds of audio generated per second once a generation
                starts (the real service is faster than real time); None for instant.
            port: Port to listen on; 0 picks a free one.
        """
        self.api_key = api_key
        self._rng = random.Random(seed)
        self.tts_first_audio = tts_first_audio
        self.stt_final = stt_final
        self.transcript = transcript or (lambda pcm: DEFAULT_TRANSCRIPT)
        self.max_contexts = max_contexts
        self.voices = voices if voices is not None else _default_voices()
        self.models = models if models is not None else _default_models()
        self.tts_speed = tts_speed
        self._port = port

        self.cert_path = certificate_pair()[0]
        self.base_url = ""
        self.ws_url = ""
        self.stt_host = ""

        self.requests: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        # Latency drawn per TTS generation and per STT commit (the benchmark subtracts it):
        # {"connection", "at" (time.monotonic()), "injected_delay"[, "context_id", "text"]}.
        self.tts_generations: list[dict[str, Any]] = []
        self.stt_commits: list[dict[str, Any]] = []
        self.closed_1008 = 0
        self.max_open_contexts_seen = 0
        self.open_connections = 0

        self._failures = {}
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task] = set()
        self._open_contexts: dict[int, _TTSConnection] = {}
        self._connection_ids = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeElevenLabs:
        app = web.Application()
        app.router.add_get("/v1/voices", self._voices)
        app.router.add_get("/v1/voices/{voice_id}", self._voice)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get(
            "/v1/text-to-speech/{voice_id}/multi-stream-input", self._tts_multi_socket
        )
        app.router.add_get("/v1/text-to-speech/{voice_id}/stream-input", self._tts_single_socket)
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._tts_http_stream)
        app.router.add_get("/v1/speech-to-text/realtime", self._stt_socket)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port, ssl_context=server_ssl_context())
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"https://127.0.0.1:{port}"
        self.ws_url = f"wss://127.0.0.1:{port}"
        self.stt_host = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- introspection -----------------------------------------------------------------------

    @property
    def open_contexts(self) -> int:
        """TTS contexts currently holding a slot, over all connections."""
        return sum(len(c) for c in self._open_contexts.values())

    def _record_request(self, endpoint: str, request: web.Request, **extra) -> dict[str, Any]:
        query = {
            k: v
            for k, v in request.query.items()
            if k not in ("xi_api_key", "xi-api-key", "authorization", "token")
        }
        entry = {
            "endpoint": endpoint,
            "method": request.method,
            "path": request.path,
            "query": query,
            "time": time.monotonic(),
            **extra,
        }
        self.requests.append(entry)
        return entry

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- auth --------------------------------------------------------------------------------

    @staticmethod
    def _request_key(request: web.Request) -> str | None:
        key = request.headers.get("xi-api-key") or request.query.get("xi_api_key")
        if key:
            return key
        auth = request.headers.get("Authorization") or request.query.get("authorization")
        if auth:
            return auth.removeprefix("Bearer ").strip()
        return None

    # --- REST --------------------------------------------------------------------------------

    async def _rest(self, endpoint: str, request: web.Request, body: Any) -> web.StreamResponse:
        entry = self._record_request(endpoint, request)
        mode = self._take_failure(endpoint)
        key = self._request_key(request)
        if mode is None:
            if key is None:
                mode_status, detail = 401, MISSING_KEY
            elif key != self.api_key:
                mode_status, detail = 401, INVALID_KEY
            else:
                entry["status"] = 200
                return web.json_response(body)
            entry["status"] = mode_status
            return web.json_response({"detail": detail}, status=mode_status)
        if mode == "hang":
            entry["status"] = None
            await asyncio.Event().wait()  # until the client gives up or the fake stops
        if mode == "drop":
            entry["status"] = 200
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            await response.prepare(request)
            text = json.dumps(body)
            await response.write(text[: max(1, len(text) // 3)].encode())
            if request.transport is not None:
                request.transport.abort()
            return response
        status, detail = REST_ERRORS[mode]
        entry["status"] = status
        return web.json_response({"detail": detail}, status=status)

    async def _voices(self, request: web.Request) -> web.StreamResponse:
        return await self._rest("voices", request, {"voices": self.voices})

    async def _voice(self, request: web.Request) -> web.StreamResponse:
        voice_id = request.match_info["voice_id"]
        voice = next((v for v in self.voices if v["voice_id"] == voice_id), None)
        if voice is None and self._request_key(request) == self.api_key:
            self._record_request("voices", request, status=404)
            detail = {
                "status": "voice_not_found",
                "message": f"A voice with voice_id {voice_id} does not exist.",
            }
            return web.json_response({"detail": detail}, status=404)
        return await self._rest("voices", request, voice)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return await self._rest("models", request, self.models)

    # --- websocket plumbing ------------------------------------------------------------------

    async def _accept(self, request: web.Request) -> tuple[web.WebSocketResponse, int]:
        ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024, autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.open_connections += 1
        self._connection_ids += 1
        return ws, self._connection_ids

    def _release(self, ws: web.WebSocketResponse) -> None:
        if ws in self._sockets:
            self._sockets.discard(ws)
            self.open_connections -= 1

    async def _close(self, ws: web.WebSocketResponse, code: int, reason: str) -> None:
        if code == 1008:
            self.closed_1008 += 1
        # A close reason is limited to 123 bytes on the wire: keep whole sentences.
        raw = reason.encode()
        if len(raw) > 123:
            cut = raw[:123].rfind(b". ")
            raw = raw[: cut + 1] if cut > 0 else raw[:123]
        with contextlib.suppress(Exception):
            await ws.close(code=code, message=raw)

    @staticmethod
    async def _abort(request: web.Request) -> None:
        """Cut the connection without a close frame, once what was sent has left."""
        await asyncio.sleep(0.05)  # abort() discards unsent data
        if request.transport is not None:
            request.transport.abort()

    async def _send(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        if ws.closed:
            raise _SocketClosed
        try:
            await ws.send_str(json.dumps(payload))
        except (ConnectionResetError, RuntimeError) as e:
            raise _SocketClosed from e

    # --- TTS ---------------------------------------------------------------------------------

    async def _tts_http_stream(self, request: web.Request) -> web.StreamResponse:
        """``POST .../stream``: the whole text's audio, streamed back as it is generated."""
        entry = self._record_request("tts", request, http=True)
        key = self._request_key(request)
        mode = self._take_failure("tts")
        if key is None or key != self.api_key or mode == "401":
            entry["status"] = 401
            return web.json_response(
                {"detail": MISSING_KEY if key is None else INVALID_KEY}, status=401
            )
        if mode in REST_ERRORS:
            status, detail = REST_ERRORS[mode]
            entry["status"] = status
            return web.json_response({"detail": detail}, status=status)
        voice_id = request.match_info["voice_id"]
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        body = body if isinstance(body, dict) else {}
        text = body.get("text")
        model_id = body.get("model_id") or "eleven_multilingual_v2"
        output_format = request.query.get("output_format", "mp3_44100_128")
        problem = None
        if not any(v["voice_id"] == voice_id for v in self.voices):
            entry["status"] = 404
            detail = {
                "status": "voice_not_found",
                "message": f"A voice with voice_id {voice_id} does not exist.",
            }
            return web.json_response({"detail": detail}, status=404)
        if not isinstance(text, str) or not text.strip():
            problem = "text is required."
        elif not any(m["model_id"] == model_id and m["can_do_text_to_speech"] for m in self.models):
            problem = f"Model {model_id} does not exist or cannot do text-to-speech."
        elif output_format not in PCM_RATES:
            problem = f"The fake only produces pcm output formats, not {output_format}."
        if problem:
            entry["status"] = 422
            return web.json_response(
                {"detail": {"status": "invalid_request", "message": problem}}, status=422
            )
        if mode == "hang":
            entry["status"] = None
            await asyncio.Event().wait()  # until the client gives up or the fake stops
        rate = PCM_RATES[output_format]
        delay = self.tts_first_audio.sample(self._rng)
        started = time.monotonic()
        self.tts_generations.append(
            {"connection": None, "text": text, "at": started, "injected_delay": delay}
        )
        entry["status"] = 200
        response = web.StreamResponse(status=200, headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        await asyncio.sleep(max(0.0, started + delay - time.monotonic()))
        pcm = speech_like_pcm(text, rate).tobytes()
        step = rate // 10 * 2  # 100 ms of audio per chunk
        try:
            for offset in range(0, len(pcm), step):
                chunk = pcm[offset : offset + step]
                await response.write(chunk)
                if mode == "drop":
                    await self._abort(request)
                    return response
                if self.tts_speed:
                    await asyncio.sleep(len(chunk) / 2 / rate / self.tts_speed)
            await response.write_eof()
        except ConnectionResetError:
            entry["outcome"] = "client closed the stream"  # an interrupted reply stops reading
        return response

    async def _tts_single_socket(self, request: web.Request) -> web.StreamResponse:
        return await self._tts_socket(request, multi=False)

    async def _tts_multi_socket(self, request: web.Request) -> web.StreamResponse:
        return await self._tts_socket(request, multi=True)

    async def _tts_socket(self, request: web.Request, *, multi: bool) -> web.StreamResponse:
        entry = self._record_request("tts", request, multi=multi)
        mode = self._take_failure("tts")
        ws, conn = await self._accept(request)
        entry["connection"] = conn
        state = _TTSConnection(request, ws, failing=mode)
        self._open_contexts[conn] = state
        try:
            await self._tts_session(state, conn, multi)
        except _SocketClosed:
            pass
        finally:
            for ctx in state.all():
                for task in ctx.generations:
                    task.cancel()
            self._open_contexts.pop(conn, None)
            self._release(ws)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _tts_session(self, state: _TTSConnection, conn: int, multi: bool) -> None:
        request, ws, mode = state.request, state.ws, state.failing
        q = request.query
        voice_id = request.match_info["voice_id"]
        model_id = q.get("model_id", "eleven_flash_v2_5" if multi else "eleven_multilingual_v2")
        output_format = q.get("output_format", "mp3_44100_128")
        auto_mode = _parse_bool(q.get("auto_mode"), False)
        try:
            inactivity = float(q.get("inactivity_timeout", "20"))
        except ValueError:
            inactivity = -1
        key = self._request_key(request)

        if mode == "401" or (key is not None and key != self.api_key):
            await self._close(ws, 1008, INVALID_KEY["message"])
            return
        # Configuration the real service rejects.
        problem = None
        if not any(v["voice_id"] == voice_id for v in self.voices):
            problem = f"A voice with voice_id {voice_id} does not exist."
        elif not any(m["model_id"] == model_id and m["can_do_text_to_speech"] for m in self.models):
            problem = f"Model {model_id} does not exist or cannot do text-to-speech."
        elif multi and model_id in NO_MULTI_CONTEXT_MODELS:
            problem = f"Multi-context websockets are not available for the {model_id} model."
        elif output_format not in TTS_OUTPUT_FORMATS:
            problem = f"Invalid output_format {output_format}."
        elif output_format not in PCM_RATES:
            problem = f"The fake only produces pcm output formats, not {output_format}."
        elif not 0 < inactivity <= 180:
            problem = "inactivity_timeout must be between 1 and 180 seconds."
        if problem:
            await self._close(ws, 1008, problem)
            return
        state.rate = PCM_RATES[output_format]
        authed = key is not None
        failing = mode  # 429/5xx/hang/drop apply on this connection

        while True:
            try:
                msg = await ws.receive(timeout=inactivity)
            except TimeoutError:
                await self._close(ws, 1008, INACTIVITY_MESSAGE.format(n=int(inactivity)))
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type != WSMsgType.TEXT:
                await self._close(ws, 1003, "Only text (JSON) messages are accepted.")
                return
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError:
                await self._close(ws, 1007, "Invalid JSON message.")
                return
            if not isinstance(data, dict):
                await self._close(ws, 1007, "Invalid message.")
                return
            self.messages.append({"endpoint": "tts", "connection": conn, "message": _redact(data)})

            if not authed:
                first_key = data.get("xi_api_key") or data.get("authorization")
                if not first_key:
                    await self._close(ws, 1008, MISSING_KEY["message"])
                    return
                if str(first_key).removeprefix("Bearer ").strip() != self.api_key:
                    await self._close(ws, 1008, INVALID_KEY["message"])
                    return
                authed = True

            if failing == "hang":
                continue  # read everything, answer nothing

            if data.get("close_socket") is True:
                await self._tts_close_socket(state)
                return

            context_id = data.get("context_id") if multi else "default"
            if multi and context_id is None:
                context_id = "default"  # documented: a default context is used
            context_id = str(context_id)
            text = data.get("text")
            if text is not None and not isinstance(text, str):
                await self._close(ws, 1008, "text must be a string.")
                return
            flush = data.get("flush") is True or data.get("try_trigger_generation") is True

            ctx = state.active.get(context_id)
            if data.get("close_context") is True:
                if ctx is not None:
                    self._close_context(state, ctx)
                continue

            if ctx is None:
                if not text and not flush and "voice_settings" not in data:
                    continue  # a keep-alive for no open context opens none
                if len(state) >= self.max_contexts:
                    message = MAX_CONTEXTS_MESSAGE.format(n=self.max_contexts)
                    with contextlib.suppress(_SocketClosed):
                        await self._send(
                            ws,
                            {"message": message, "error": "max_active_conversations", "code": 1008},
                        )
                    await self._close(ws, 1008, message)
                    return
                if failing in TTS_WS_ERRORS:
                    code, message = TTS_WS_ERRORS[failing]
                    with contextlib.suppress(_SocketClosed):
                        await self._send(ws, {"message": message, "error": code, "code": 1008})
                    await self._close(ws, 1008, message)
                    return
                ctx = _TTSContext(context_id, data.get("voice_settings"))
                state.active[context_id] = ctx
                self.max_open_contexts_seen = max(self.max_open_contexts_seen, self.open_contexts)
            elif "voice_settings" in data and data["voice_settings"] != ctx.voice_settings:
                await self._close(ws, 1008, VOICE_SETTINGS_MESSAGE)
                return

            if not multi and text == "":
                # stream-input: the empty string ends the input; flush and finish.
                self._trigger(state, ctx)
                self._close_context(state, ctx, close_socket_after=True)
                continue

            if text:
                ctx.buffer += text
            pending = ctx.buffer.strip()
            if pending and (
                flush
                or (auto_mode and SENTENCE_END.search(ctx.buffer))
                or len(pending) >= CHUNK_LENGTH_SCHEDULE_FIRST
            ):
                self._trigger(state, ctx)

    def _trigger(self, state: _TTSConnection, ctx: _TTSContext) -> None:
        """Send the context's buffered text for generation."""
        text = ctx.buffer
        ctx.buffer = ""
        if not text.strip():
            return
        delay = self.tts_first_audio.sample(self._rng)
        deadline = time.monotonic() + delay
        conn = next((c for c, s in self._open_contexts.items() if s is state), None)
        self.tts_generations.append(
            {
                "connection": conn,
                "context_id": ctx.context_id,
                "text": text,
                "at": time.monotonic(),
                "injected_delay": delay,
            }
        )
        previous = ctx.last_generation
        task = self._spawn(self._generate(state, ctx, text, deadline, previous))
        ctx.last_generation = task
        ctx.generations.add(task)
        task.add_done_callback(ctx.generations.discard)

    async def _generate(
        self,
        state: _TTSConnection,
        ctx: _TTSContext,
        text: str,
        deadline: float,
        previous: asyncio.Task | None,
    ) -> None:
        ws, rate, failing = state.ws, state.rate, state.failing
        if previous is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await previous
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pcm = speech_like_pcm(text, rate).tobytes()
        n_samples = len(pcm) // 2
        ms_per_char = n_samples / rate * 1000 / len(text)
        # A few chunks, cut at word boundaries; each has its own alignment from 0 ms.
        pieces = [p for p in re.findall(r"\S+\s*|\s+", text)]
        n_chunks = min(3, len(pieces))
        per = math.ceil(len(pieces) / n_chunks)
        groups = ["".join(pieces[i : i + per]) for i in range(0, len(pieces), per)]
        start_char = 0
        try:
            for i, group in enumerate(groups):
                end_char = start_char + len(group)
                a = round(start_char * ms_per_char * rate / 1000) * 2
                b = (
                    len(pcm)
                    if i == len(groups) - 1
                    else round(end_char * ms_per_char * rate / 1000) * 2
                )
                chunk = pcm[a:b]
                starts = [round(j * ms_per_char) for j in range(len(group))]
                durations = [
                    round((j + 1) * ms_per_char) - round(j * ms_per_char) for j in range(len(group))
                ]
                alignment = {
                    "chars": list(group),
                    "charStartTimesMs": starts,
                    "charDurationsMs": durations,
                }
                await self._send(
                    ws,
                    {
                        "audio": base64.b64encode(chunk).decode(),
                        "normalizedAlignment": alignment,
                        "alignment": alignment,
                        "contextId": ctx.context_id,
                    },
                )
                ctx.first_audio_pending = False
                if failing == "drop":
                    raise _SocketClosed  # handled below: cut the connection
                if self.tts_speed:
                    await asyncio.sleep(len(chunk) / 2 / rate / self.tts_speed)
                start_char = end_char
        except _SocketClosed:
            if failing == "drop":
                await self._abort(state.request)

    def _close_context(
        self, state: _TTSConnection, ctx: _TTSContext, close_socket_after: bool = False
    ) -> None:
        """close_context: text already sent for generation keeps flushing, then isFinal.

        The context holds its slot until its isFinal is sent.
        """
        if ctx.closing:
            return
        ctx.closing = True
        ctx.buffer = ""  # not yet sent for generation: dropped
        if state.active.get(ctx.context_id) is ctx:
            del state.active[ctx.context_id]
        state.closing.append(ctx)

        async def finish():
            pending = list(ctx.generations)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if ctx in state.closing:
                state.closing.remove(ctx)
            if ctx.finished:
                return
            ctx.finished = True
            with contextlib.suppress(_SocketClosed):
                await self._send(state.ws, {"isFinal": True, "contextId": ctx.context_id})
            if close_socket_after:
                await self._close(state.ws, 1000, "")

        self._spawn(finish())

    async def _tts_close_socket(self, state: _TTSConnection) -> None:
        """close_socket: what is flushing finishes, then every context and the socket end."""
        contexts = state.all()
        for ctx in contexts:
            ctx.buffer = ""
            ctx.closing = True
        pending = [t for ctx in contexts for t in ctx.generations]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for ctx in contexts:
            if not ctx.finished:
                ctx.finished = True
                with contextlib.suppress(_SocketClosed):
                    await self._send(state.ws, {"isFinal": True, "contextId": ctx.context_id})
        state.active.clear()
        state.closing.clear()
        await self._close(state.ws, 1000, "")

    # --- STT ---------------------------------------------------------------------------------

    async def _stt_socket(self, request: web.Request) -> web.StreamResponse:
        entry = self._record_request("stt", request)
        mode = self._take_failure("stt")
        ws, conn = await self._accept(request)
        entry["connection"] = conn
        session = _STTSession(self, request, ws, conn, mode)
        try:
            await session.run()
        except _SocketClosed:
            pass
        finally:
            session.cancel()
            self._release(ws)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws


class _STTSession:
    """One realtime speech-to-text connection."""

    FRAME_MS = 20
    PARTIAL_EVERY_MS = 300

    def __init__(
        self,
        fake: FakeElevenLabs,
        request: web.Request,
        ws: web.WebSocketResponse,
        conn: int,
        mode: str | None,
    ):
        self.fake = fake
        self.request = request
        self.ws = ws
        self.conn = conn
        self.mode = mode
        self.tasks: list[asyncio.Task] = []
        self.last_commit: asyncio.Task | None = None
        self.chunks_seen = 0
        # segment state
        self.segment = bytearray()
        self.speech_ms = 0.0
        self.silence_ms = 0.0
        self.in_speech = False
        self.had_speech = False
        self.since_partial_ms = 0.0
        self.last_partial = ""
        self.carry = b""

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def error(self, message_type: str, error: str, code: int) -> None:
        with contextlib.suppress(_SocketClosed):
            await self.fake._send(self.ws, {"message_type": message_type, "error": error})
        await self.fake._close(self.ws, code, error)

    async def run(self) -> None:
        fake, q = self.fake, self.request.query
        if self.mode == "hang":
            while True:
                msg = await self.ws.receive()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    return
                if msg.type == WSMsgType.ERROR:
                    return
        key = fake._request_key(self.request) or q.get("token")
        if self.mode == "401" or key is None or key != fake.api_key:
            await self.error("auth_error", "Invalid API key" if key else "Missing API key", 1008)
            return
        if self.mode in ("429", "500", "503"):
            await self.error(*STT_WS_ERRORS[self.mode])
            return

        model_id = q.get("model_id")
        audio_format = q.get("audio_format", "pcm_16000")
        commit_strategy = q.get("commit_strategy", "manual")
        problems = []
        if not model_id:
            problems.append("model_id is required")
        elif model_id not in STT_MODELS:
            problems.append(f"Invalid model_id {model_id}")
        if audio_format not in STT_AUDIO_FORMATS:
            problems.append(f"Invalid audio_format {audio_format}")
        if commit_strategy not in ("manual", "vad"):
            problems.append(f"Invalid commit_strategy {commit_strategy}")
        limits = {
            "vad_silence_threshold_secs": (0.3, 3.0, 1.5),
            "vad_threshold": (0.1, 0.9, 0.4),
            "min_speech_duration_ms": (50, 2000, 250),
            "min_silence_duration_ms": (50, 2000, 2500),
        }
        values: dict[str, float] = {}
        for name, (low, high, default) in limits.items():
            raw = q.get(name)
            if raw is None:
                values[name] = default
                continue
            try:
                values[name] = float(raw)
            except ValueError:
                problems.append(f"{name} must be a number")
                continue
            if not low <= values[name] <= high:
                problems.append(f"{name} must be between {low} and {high}")
        if problems:
            await self.error("invalid_request", "; ".join(problems), 1008)
            return

        self.rate = STT_AUDIO_FORMATS[audio_format]
        self.ulaw = audio_format == "ulaw_8000"
        self.vad = commit_strategy == "vad"
        self.silence_threshold_ms = values["vad_silence_threshold_secs"] * 1000
        self.min_speech_ms = values["min_speech_duration_ms"]
        # vad_threshold (0.1-0.9, lower is more sensitive) -> an RMS floor on 16-bit audio.
        self.energy_floor = 250 + 1500 * values["vad_threshold"]
        self.include_timestamps = _parse_bool(q.get("include_timestamps"), False)
        self.include_language = _parse_bool(q.get("include_language_detection"), False)
        self.language_code = q.get("language_code")

        config: dict[str, Any] = {
            "sample_rate": self.rate,
            "audio_format": audio_format,
            "language_code": self.language_code,
            "commit_strategy": commit_strategy,
            "vad_silence_threshold_secs": values["vad_silence_threshold_secs"],
            "vad_threshold": values["vad_threshold"],
            "min_speech_duration_ms": int(values["min_speech_duration_ms"]),
            "min_silence_duration_ms": int(values["min_silence_duration_ms"]),
            "model_id": model_id,
            "enable_logging": _parse_bool(q.get("enable_logging"), True),
            "include_timestamps": self.include_timestamps,
            "include_language_detection": self.include_language,
        }
        if q.getall("keyterms", []):
            config["keyterms"] = q.getall("keyterms")
        await fake._send(
            self.ws,
            {"message_type": "session_started", "session_id": uuid.uuid4().hex, "config": config},
        )

        while True:
            msg = await self.ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type != WSMsgType.TEXT:
                await self.error("input_error", "Messages must be JSON text.", 1008)
                return
            try:
                data = json.loads(msg.data)
            except json.JSONDecodeError:
                await self.error("input_error", "Invalid JSON.", 1008)
                return
            if not isinstance(data, dict):
                await self.error("input_error", "Invalid message.", 1008)
                return
            fake.messages.append(
                {"endpoint": "stt", "connection": self.conn, "message": _redact(data)}
            )
            await self.handle_chunk(data)

    async def handle_chunk(self, data: dict[str, Any]) -> None:
        if data.get("message_type") != "input_audio_chunk":
            await self.error(
                "input_error", f"Unknown message_type {data.get('message_type')!r}.", 1008
            )
            raise _SocketClosed
        for name, kind in (("audio_base_64", str), ("commit", bool), ("sample_rate", int)):
            if not isinstance(data.get(name), kind) or (
                kind is int and isinstance(data[name], bool)
            ):
                await self.error("input_error", f"{name} is required ({kind.__name__}).", 1008)
                raise _SocketClosed
        if data["sample_rate"] != self.rate:
            await self.error(
                "input_error",
                f"sample_rate {data['sample_rate']} does not match audio_format ({self.rate} Hz).",
                1008,
            )
            raise _SocketClosed
        if data.get("previous_text") is not None and self.chunks_seen > 0:
            await self.error(
                "input_error", "previous_text can only be sent with the first audio chunk.", 1008
            )
            raise _SocketClosed
        try:
            audio = base64.b64decode(data["audio_base_64"], validate=True)
        except (binascii.Error, ValueError):
            await self.error("input_error", "audio_base_64 is not valid base64.", 1008)
            raise _SocketClosed from None
        self.chunks_seen += 1
        if audio:
            await self.feed(audio)
        if data["commit"]:
            self.commit()

    def _samples(self, audio: bytes) -> np.ndarray:
        if self.ulaw:
            u = ~np.frombuffer(audio, dtype=np.uint8)
            sign = u & 0x80
            exponent = (u >> 4) & 0x07
            mantissa = u & 0x0F
            magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
            values = magnitude - 0x84
            return np.where(sign != 0, -values, values).astype(np.int16)
        data = self.carry + audio
        usable = len(data) - len(data) % 2
        self.carry = data[usable:]
        return np.frombuffer(data[:usable], dtype="<i2")

    async def feed(self, audio: bytes) -> None:
        samples = self._samples(audio)
        frame = max(1, self.rate * self.FRAME_MS // 1000)
        for i in range(0, len(samples), frame):
            window = samples[i : i + frame]
            # Window by window, so a partial only hears the audio up to its own
            # moment even when a late client sends a long chunk at once.
            self.segment.extend(window.astype("<i2").tobytes())
            ms = len(window) / self.rate * 1000
            if _rms(window) >= self.energy_floor:
                self.in_speech = True
                self.speech_ms += ms
                self.silence_ms = 0.0
                self.since_partial_ms += ms
                if self.speech_ms >= self.min_speech_ms:
                    self.had_speech = True
                if self.had_speech and self.since_partial_ms >= self.PARTIAL_EVERY_MS:
                    self.since_partial_ms = 0.0
                    await self.partial()
            else:
                self.silence_ms += ms
                if (
                    self.had_speech
                    and self.in_speech
                    and self.silence_ms - ms < 100 <= self.silence_ms
                ):
                    await self.partial(complete=True)
                if self.in_speech and self.silence_ms >= 200:
                    self.in_speech = False
                if self.vad and self.had_speech and self.silence_ms >= self.silence_threshold_ms:
                    self.commit()

    async def partial(self, complete: bool = False) -> None:
        words = self.fake.transcript(bytes(self.segment)).split()
        if not words:
            return
        expected_ms = max(200.0, len(" ".join(words)) / 15.0 * 1000)
        shown = max(1, min(len(words), math.ceil(len(words) * self.speech_ms / expected_ms)))
        if complete:
            shown = len(words)
        text = " ".join(words[:shown])
        if text == self.last_partial:
            return
        self.last_partial = text
        await self.fake._send(self.ws, {"message_type": "partial_transcript", "text": text})
        if self.mode == "drop":
            await self.fake._abort(self.request)
            raise _SocketClosed

    def commit(self) -> None:
        pcm = bytes(self.segment)
        had_speech = self.had_speech
        self.segment = bytearray()
        self.speech_ms = self.silence_ms = self.since_partial_ms = 0.0
        self.in_speech = self.had_speech = False
        self.last_partial = ""
        delay = self.fake.stt_final.sample(self.fake._rng)
        self.fake.stt_commits.append(
            {"connection": self.conn, "at": time.monotonic(), "injected_delay": delay}
        )
        previous = self.last_commit
        task = asyncio.get_running_loop().create_task(
            self._committed(pcm, had_speech, delay, previous)
        )
        self.tasks.append(task)
        self.last_commit = task

    async def _committed(
        self, pcm: bytes, had_speech: bool, delay: float, previous: asyncio.Task | None
    ) -> None:
        start = time.monotonic()
        if previous is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await previous
        text = self.fake.transcript(pcm).strip() if had_speech else ""
        remaining = delay - (time.monotonic() - start)
        if remaining > 0:
            await asyncio.sleep(remaining)
        with contextlib.suppress(_SocketClosed):
            await self.fake._send(self.ws, {"message_type": "committed_transcript", "text": text})
            if self.include_timestamps or self.include_language:
                message: dict[str, Any] = {
                    "message_type": "committed_transcript_with_timestamps",
                    "text": text,
                    "language_code": self.language_code or "en",
                    "words": self._words(text, len(pcm) / 2 / self.rate)
                    if self.include_timestamps
                    else None,
                }
                await self.fake._send(self.ws, message)

    @staticmethod
    def _words(text: str, duration: float) -> list[dict[str, Any]]:
        tokens = re.findall(r"\S+|\s+", text)
        if not tokens:
            return []
        step = duration / max(1, len(text))
        words, t = [], 0.0
        for token in tokens:
            end = t + step * len(token)
            kind = "spacing" if token.isspace() else "word"
            entry: dict[str, Any] = {
                "text": token,
                "start": round(t, 3),
                "end": round(end, 3),
                "type": kind,
            }
            if kind == "word":
                entry["logprob"] = 0.0
                entry["characters"] = list(token)
            words.append(entry)
            t = end
        return words
