"""A fake of the Groq API on 127.0.0.1, speaking Groq's documented wire protocol.

Covers what the voice agent uses: streamed chat completions (OpenAI-compatible
``chat.completion.chunk`` SSE with Groq's ``x_groq`` object), Whisper
transcriptions (multipart upload), Orpheus text-to-speech (WAV bytes) and the
model list. ``base_url`` is the API root, as ``GROQ_BASE_URL`` and the ``groq``
SDK expect it; OpenAI-compatible clients (pipecat's ``GroqLLMService`` and
``GroqSTTService``) need ``base_url + "/openai/v1"``.

What it follows from Groq's API reference and observed responses:

- errors are ``{"error": {"message", "type"[, "code"]}}``; a bad key is 401
  ``invalid_api_key``; an unknown model is 404 ``model_not_found``; a schema
  violation is 400 ``invalid_request_error``; a rate limit is 429
  ``rate_limit_exceeded`` with ``retry-after`` (whole seconds) and the
  ``x-ratelimit-*`` headers (those are on every response);
- a stream is one chunk per token, the first carrying ``role: assistant`` and
  ``x_groq.id``, the last an empty delta with ``finish_reason`` and
  ``x_groq.usage`` (queue/prompt/completion/total times); with
  ``stream_options.include_usage`` a further chunk with empty ``choices`` and a
  top-level ``usage``; then ``data: [DONE]``;
- a transcription is ``{"text": ..., "x_groq": {"id": ...}}`` (``json``), the
  Whisper ``verbose_json`` shape, or plain ``text``;
- speech is ``audio/wav`` (RIFF, int16 mono) at the requested ``sample_rate``
  (default 24 kHz, Orpheus' native rate); Orpheus takes at most 200 characters
  of input and only its own voices.

Latencies come from ``Latency.sample`` with one ``random.Random(seed)``.
Failures are injected per endpoint with :meth:`FakeGroq.fail`. Requests are
recorded (never the ``Authorization`` header) in :attr:`FakeGroq.requests`.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import socket
import string
import struct
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from testkit.fakes.common import Latency, ProviderFake, speech_like_pcm

ENDPOINTS = ("chat", "transcriptions", "speech", "models")

DEFAULT_CHAT_MODELS = [
    "llama-3.1-8b-instant",
    "llama-3.3-70b-versatile",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "meta-llama/llama-4-scout-17b-16e-instruct",
    "qwen/qwen3-32b",
]
DEFAULT_STT_MODELS = ["whisper-large-v3", "whisper-large-v3-turbo"]
DEFAULT_TTS_MODELS = ["canopylabs/orpheus-v1-english", "canopylabs/orpheus-arabic-saudi"]

# id -> (owned_by, context_window, max_completion_tokens), as GET /models reports them.
_MODEL_INFO: dict[str, tuple[str, int, int]] = {
    "llama-3.1-8b-instant": ("Meta", 131072, 131072),
    "llama-3.3-70b-versatile": ("Meta", 131072, 32768),
    "openai/gpt-oss-20b": ("OpenAI", 131072, 65536),
    "openai/gpt-oss-120b": ("OpenAI", 131072, 65536),
    "meta-llama/llama-4-scout-17b-16e-instruct": ("Meta", 131072, 8192),
    "qwen/qwen3-32b": ("Alibaba Cloud", 131072, 40960),
    "whisper-large-v3": ("OpenAI", 448, 448),
    "whisper-large-v3-turbo": ("OpenAI", 448, 448),
    "canopylabs/orpheus-v1-english": ("Canopy Labs", 4000, 50000),
    "canopylabs/orpheus-arabic-saudi": ("Canopy Labs", 4000, 50000),
}
# Models that accept `reasoning_effort`; the others reject the parameter.
_REASONING_MODELS = ("openai/gpt-oss-", "qwen/")

ORPHEUS_VOICES: dict[str, tuple[str, ...]] = {
    "canopylabs/orpheus-v1-english": ("autumn", "diana", "hannah", "austin", "daniel", "troy"),
    "canopylabs/orpheus-arabic-saudi": ("abdullah", "fahad", "sultan", "lulwa", "noura", "aisha"),
}
TTS_SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
TTS_DEFAULT_SAMPLE_RATE = 24000
STT_FILE_TYPES = ("flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "opus", "wav", "webm")
STT_MAX_FILE_BYTES = 25 * 1024 * 1024
STT_RESPONSE_FORMATS = ("json", "verbose_json", "text")

# Top-level chat parameters Groq's schema accepts; anything else is "unsupported".
_CHAT_PARAMS = frozenset(
    {
        "messages",
        "model",
        "frequency_penalty",
        "presence_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "max_completion_tokens",
        "metadata",
        "n",
        "parallel_tool_calls",
        "reasoning_effort",
        "reasoning_format",
        "include_reasoning",
        "response_format",
        "search_settings",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_p",
        "user",
        "documents",
        "citation_options",
        "compound_custom",
        "disable_tool_validation",
        "exclude_domains",
        "include_domains",
    }
)
_MESSAGE_PROPS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "function_call", "reasoning"},
    "tool": {"role", "content", "tool_call_id", "name"},
    "function": {"role", "content", "name"},
}

DEFAULT_TRANSCRIPT = "What is the weather like in Paris today?"

NO_DELAY = Latency()


def default_reply(messages: list[dict]) -> str:
    """A short two-sentence answer that mentions the last user message."""
    last = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            last = _text_of(message.get("content"))
            break
    last = " ".join(last.split())
    if len(last) > 60:
        last = last[:57].rstrip() + "..."
    if not last:
        return "I did not catch a question there. Could you say that again?"
    return f'You asked: "{last}" That is a good question. Here is a short answer for you.'


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def tokenize(text: str) -> list[str]:
    """Word-ish tokens that keep their leading whitespace, so ``"".join`` restores ``text``."""
    tokens = re.findall(r"\s*\S+", text)
    rest = text[len("".join(tokens)) :]
    if rest:
        if tokens:
            tokens[-1] += rest
        else:
            tokens = [rest]
    return tokens


_NUMBER_WORDS = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_FILLER_WORDS = {"now", "right", "today", "please", "at", "the", "moment"}


def order_numbers(text: str) -> list[str]:
    """Numbers of three or more digits, however spoken: "1234", "12-34", "one two three four"."""
    lowered = text.lower()
    for word, digit in _NUMBER_WORDS.items():
        lowered = re.sub(rf"\b{word}\b", digit, lowered)
    found = [re.sub(r"\D", "", m) for m in re.findall(r"\d(?:[ ,-]?\d)+", lowered)]
    return [n for n in found if len(n) >= 3]


def _tool_named(tools: list[dict], word: str, *, without: str = "") -> dict | None:
    for tool in tools:
        name = tool["function"].get("name", "")
        if word in name and not (without and without in name):
            return tool["function"]
    return None


def _first_parameter(function: dict) -> str:
    parameters = function.get("parameters") or {}
    required = parameters.get("required") or list(parameters.get("properties") or {})
    return required[0] if required else "value"


def default_tool_choice(text: str, tools: list[dict]) -> list[tuple[str, dict]]:
    """Which tools a model would call for ``text``, by the tools' names and the user's words.

    An order number asks for a tool named "...order..." (one named "...cancel..."
    if the user said "cancel"), one call per number; "time in <City>" asks for a
    tool named "...time...". Arguments go in each tool's first required parameter.
    """
    calls: list[tuple[str, dict]] = []
    cancel = re.search(r"\bcancel", text, re.IGNORECASE) is not None
    lookup = (
        _tool_named(tools, "cancel")
        if cancel and _tool_named(tools, "cancel")
        else _tool_named(tools, "order", without="cancel")
    )
    if lookup is not None:
        for number in order_numbers(text):
            calls.append((lookup["name"], {_first_parameter(lookup): number}))
    clock = _tool_named(tools, "time")
    match = re.search(r"\btime\b[^.?!]*?\bin ([a-z][a-z ]*)", text, re.IGNORECASE)
    if clock is not None and match:
        words = match.group(1).split()
        while words and words[-1].lower() in _FILLER_WORDS:
            words.pop()
        if words:
            city = " ".join(w.capitalize() for w in words[:3])
            calls.append((clock["name"], {_first_parameter(clock): city}))
    return calls


def _tool_call_deltas(calls: list[dict]) -> list[dict]:
    """Streamed tool calls as OpenAI-compatible APIs send them (Groq's included).

    Per call: a delta with its ``index``, ``id``, ``type`` and name with empty
    arguments, then the arguments in pieces, each with only the ``index``.
    """
    deltas = []
    for index, call in enumerate(calls):
        function = call["function"]
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": function["name"], "arguments": ""},
                    }
                ]
            }
        )
        arguments = function["arguments"]
        for start in range(0, len(arguments), 8):
            piece = arguments[start : start + 8]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return deltas


def _result_text(content: Any) -> str | None:
    """A tool result as text: JSON strings unwrapped; None for "still running" or cancelled."""
    text = _text_of(content)
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, dict) and value.get("type") == "async_tool":
        # pipecat's asynchronous-tool messages: a placeholder, or the final result.
        if value.get("status") != "finished" or value.get("result") is None:
            return None
        return _result_text(value["result"])
    if not isinstance(value, str):
        value = json.dumps(value)
    if not value or value in ("IN_PROGRESS", "COMPLETED") or value.startswith("CANCELLED"):
        return None
    return value


def tool_results(messages: list[dict]) -> list[tuple[str, str]]:
    """(tool_call_id, result text) of every finished tool call in the conversation, in order."""
    found = []
    for message in messages:
        role = message.get("role")
        if role == "tool" and message.get("tool_call_id"):
            text = _result_text(message.get("content"))
            if text is not None:
                found.append((message["tool_call_id"], text))
        elif role == "developer":
            try:
                payload = json.loads(_text_of(message.get("content")))
            except ValueError:
                continue
            if isinstance(payload, dict) and payload.get("tool_call_id"):
                text = _result_text(message.get("content"))
                if text is not None:
                    found.append((payload["tool_call_id"], text))
    return found


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def _request_id() -> str:
    alphabet = string.digits + "abcdefghjkmnpqrstvwxyz"  # Crockford base32, as Groq's ULIDs
    return "req_01" + "".join(random.choice(alphabet) for _ in range(24))


@dataclass
class UploadedFile:
    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass
class RecordedRequest:
    """One request as the fake saw it. The ``Authorization`` value is never kept."""

    endpoint: str  # "chat" | "transcriptions" | "speech" | "models" | "unknown"
    method: str
    path: str
    received_at: float  # time.monotonic() when the request arrived
    headers: dict[str, str]  # all but Authorization / Cookie
    authorized: bool = False  # a valid Bearer key was presented
    model: str | None = None
    json: dict | None = None  # chat / speech bodies
    form: dict[str, Any] | None = None  # transcription fields other than the file
    file: UploadedFile | None = None  # the uploaded audio
    status: int | None = None  # HTTP status sent (None: no response was started)
    outcome: str = "pending"  # "ok" | "failed" | "cancelled" (client went away)
    injected: str | None = None  # the failure mode applied, if any
    injected_delay: float | None = None  # seconds of latency drawn for it (benchmark)

    @property
    def messages(self) -> list[dict]:
        return (self.json or {}).get("messages", [])


class _Abort(Exception):
    """Raised inside a handler after the connection was cut on purpose."""


class FakeGroq(ProviderFake):
    """The Groq API on 127.0.0.1. Use as ``async with FakeGroq(...) as groq:``."""

    TTS_MAX_INPUT_CHARS = 200
    provider = "groq"
    endpoints = ENDPOINTS

    def __init__(
        self,
        *,
        api_key: str = "gsk_fake_valid_key",
        seed: int = 0,
        stt_latency: Latency = NO_DELAY,
        llm_ttft: Latency = NO_DELAY,
        llm_token_interval: float = 0.0,
        tts_latency: Latency = NO_DELAY,
        transcript: Callable[[bytes], str] | None = None,
        reply: Callable[[list[dict]], str] | None = None,
        choose_tools: Callable[[str, list[dict]], list[tuple[str, dict]]] | None = None,
        chat_models: list[str] | None = None,
        stt_models: list[str] | None = None,
        tts_models: list[str] | None = None,
        retry_after: int = 1,
        tts_chunk_bytes: int = 8192,
    ):
        self.api_key = api_key
        self.seed = seed
        self.stt_latency = stt_latency
        self.llm_ttft = llm_ttft
        self.llm_token_interval = llm_token_interval
        self.tts_latency = tts_latency
        self.transcript = transcript or (lambda _wav: DEFAULT_TRANSCRIPT)
        self.reply = reply or default_reply
        # (the last user message, the tools offered) -> the calls to make, [] for none.
        self.choose_tools = choose_tools or default_tool_choice
        # Tool calls whose results a reply has already passed on (by tool_call_id).
        self.answered_calls: set[str] = set()
        self.chat_models = list(chat_models or DEFAULT_CHAT_MODELS)
        self.stt_models = list(stt_models or DEFAULT_STT_MODELS)
        self.tts_models = list(tts_models or DEFAULT_TTS_MODELS)
        self.retry_after = retry_after  # seconds, in the 429's retry-after header
        self.tts_chunk_bytes = tts_chunk_bytes

        self.requests: list[RecordedRequest] = []
        self.stats: dict[str, dict[str, int]] = {
            name: {"ok": 0, "failed": 0, "cancelled": 0} for name in ENDPOINTS
        }
        self._rng = random.Random(seed)
        self._failures = {}
        self._open = 0
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._created = int(time.time()) - 86400 * 30
        self._remaining_requests = 14400
        self.base_url = ""

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> FakeGroq:
        app = web.Application(client_max_size=STT_MAX_FILE_BYTES + 1024 * 1024)
        app.router.add_post("/openai/v1/chat/completions", self._chat)
        app.router.add_post("/openai/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/openai/v1/audio/speech", self._speech)
        app.router.add_get("/openai/v1/models", self._models)
        app.router.add_get("/openai/v1/models/{model:.+}", self._model)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        # handler_cancellation: a client that goes away cancels its handler, so
        # open_responses drops back to 0 even for a hung request.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._stopping.clear()
        return self

    async def stop(self) -> None:
        self._stopping.set()  # releases hung handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ control

    @property
    def open_responses(self) -> int:
        """Requests being handled right now (0 once every client went away)."""
        return self._open

    async def wait_idle(self, timeout: float = 2.0) -> bool:
        """Wait until no response is in flight; False if some still are after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self._open == 0

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    # ---------------------------------------------------------------- plumbing

    def _headers(self, request_id: str) -> dict[str, str]:
        self._remaining_requests = max(0, self._remaining_requests - 1)
        return {
            "x-request-id": request_id,
            "x-groq-region": "fake-local",
            "x-ratelimit-limit-requests": "14400",
            "x-ratelimit-limit-tokens": "6000",
            "x-ratelimit-remaining-requests": str(self._remaining_requests),
            "x-ratelimit-remaining-tokens": "5900",
            "x-ratelimit-reset-requests": "6s",
            "x-ratelimit-reset-tokens": "1s",
            "cache-control": "private, max-age=0, no-store, no-cache, must-revalidate",
        }

    def _error(
        self,
        rec: RecordedRequest,
        request_id: str,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> web.Response:
        error: dict[str, Any] = {"message": message, "type": type_}
        if code:
            error["code"] = code
        if param:
            error["param"] = param
        headers = self._headers(request_id)
        headers.update(extra_headers or {})
        rec.status = status
        return web.json_response({"error": error}, status=status, headers=headers)

    def _injected_error(self, rec: RecordedRequest, request_id: str, mode: str) -> web.Response:
        if mode == "401":
            return self._error(rec, request_id, 401, "Invalid API Key", code="invalid_api_key")
        if mode == "429":
            model = rec.model or "llama-3.1-8b-instant"
            return self._error(
                rec,
                request_id,
                429,
                f"Rate limit reached for model `{model}` in organization "
                "`org_01fakefakefakefakefakefake` service tier `on_demand` on requests per "
                f"minute (RPM): Limit 30, Used 30, Requested 1. Please try again in "
                f"{self.retry_after}s. Visit https://console.groq.com/docs/rate-limits for "
                "more information.",
                type_="requests",
                code="rate_limit_exceeded",
                extra_headers={
                    "retry-after": str(self.retry_after),
                    "x-ratelimit-remaining-requests": "0",
                },
            )
        if mode == "500":
            return self._error(
                rec, request_id, 500, "Internal Server Error", "internal_server_error"
            )
        # 503
        return self._error(
            rec,
            request_id,
            503,
            "Service Unavailable: the service is over capacity, please try again later.",
            "internal_server_error",
            code="service_unavailable",
        )

    def _record(self, request: web.Request, endpoint: str) -> RecordedRequest:
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("authorization", "cookie")
        }
        auth = request.headers.get("Authorization", "")
        rec = RecordedRequest(
            endpoint=endpoint,
            method=request.method,
            path=request.path,
            received_at=time.monotonic(),
            headers=headers,
            authorized=auth == f"Bearer {self.api_key}",
        )
        self.requests.append(rec)
        return rec

    async def _hang(self, request: web.Request) -> None:
        """Send nothing until the client leaves (handler cancelled) or the fake stops."""
        await self._stopping.wait()
        self._cut(request)
        raise _Abort

    @staticmethod
    def _cut(request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _sleep_until(self, start: float, delay: float) -> None:
        remaining = start + delay - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)

    async def _serve(self, request: web.Request, endpoint: str, handler) -> web.StreamResponse:
        """Common path: record, authenticate, inject failures, then run ``handler``."""
        rec = self._record(request, endpoint)
        request_id = _request_id()
        self._open += 1
        try:
            if not rec.authorized:
                response = self._error(
                    rec, request_id, 401, "Invalid API Key", code="invalid_api_key"
                )
            else:
                mode = self._take_failure(endpoint)
                rec.injected = mode
                if mode == "hang":
                    await self._hang(request)
                if mode in ("401", "429", "500", "503"):
                    response = self._injected_error(rec, request_id, mode)
                else:
                    response = await handler(request, rec, request_id, mode == "drop")
            rec.outcome = "ok" if rec.status is not None and rec.status < 400 else "failed"
            if rec.injected == "drop":
                rec.outcome = "failed"
            return response
        except _Abort:
            rec.outcome = "failed"
            # The connection is gone; there is nothing left to send. aiohttp treats a
            # cancelled handler as a client that went away, quietly.
            raise asyncio.CancelledError from None
        except asyncio.CancelledError:
            rec.outcome = "failed" if rec.injected else "cancelled"
            raise
        except ConnectionResetError:  # a write raced the client's disconnect
            rec.outcome = "failed" if rec.injected else "cancelled"
            raise asyncio.CancelledError from None
        finally:
            self._open -= 1
            self.stats[endpoint][rec.outcome if rec.outcome != "pending" else "failed"] += 1

    # -------------------------------------------------------------------- chat

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat", self._chat_inner)

    async def _read_json(self, request, rec, request_id) -> dict | web.Response:
        if request.content_type != "application/json":
            return self._error(
                rec,
                request_id,
                400,
                f"request Content-Type isn't application/json: got {request.content_type!r}",
            )
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._error(
                rec,
                request_id,
                400,
                "We could not parse the JSON body of your request. Please check that the "
                "body is valid JSON.",
            )
        if not isinstance(body, dict):
            return self._error(rec, request_id, 400, "request body must be a JSON object")
        rec.json = body
        rec.model = body.get("model") if isinstance(body.get("model"), str) else None
        return body

    def _validate_chat(self, body: dict) -> tuple[int, str, str | None] | None:
        for key in body:
            if key not in _CHAT_PARAMS:
                return 400, f"property '{key}' is unsupported", None
        if "model" not in body:
            return 400, "'model' : property 'model' is missing", None
        model = body["model"]
        if not isinstance(model, str):
            return 400, "'model' : value must be a string", None
        if model not in self.chat_models:
            if model in self.stt_models or model in self.tts_models:
                return 400, f"model `{model}` does not support chat completions", None
            return (
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "model_not_found",
            )
        messages = body.get("messages")
        if messages is None:
            return 400, "'messages' : property 'messages' is missing", None
        if not isinstance(messages, list):
            return 400, "'messages' : value must be an array", None
        if not messages:
            return 400, "'messages' : minimum number of items is 1", None
        for i, message in enumerate(messages):
            where = f"'messages.{i}'"
            if not isinstance(message, dict):
                return 400, f"{where} : value must be an object", None
            role = message.get("role")
            if role not in _MESSAGE_PROPS:
                return 400, f"{where} : discriminator property 'role' has invalid value", None
            for key in message:
                if key not in _MESSAGE_PROPS[role]:
                    return (
                        400,
                        f"{where} : for 'role:{role}' the following must be satisfied"
                        f"[({where} : property '{key}' is unsupported)]",
                        None,
                    )
            if role in ("system", "developer", "user", "tool") and "content" not in message:
                return 400, f"{where} : property 'content' is missing", None
            if role == "tool" and "tool_call_id" not in message:
                return 400, f"{where} : property 'tool_call_id' is missing", None
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                return 400, f"'{key}' : number must be at least 1", None
        temperature = body.get("temperature")
        if temperature is not None and not (
            isinstance(temperature, int | float) and 0 <= temperature <= 2
        ):
            return 400, "'temperature' : number must be at most 2", None
        top_p = body.get("top_p")
        if top_p is not None and not (isinstance(top_p, int | float) and 0 <= top_p <= 1):
            return 400, "'top_p' : number must be at most 1", None
        if body.get("n") not in (None, 1):
            return 400, "'n' : number must be at most 1", None
        if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
            return 400, "'stream' : value must be a boolean", None
        if body.get("reasoning_effort") is not None:
            if not model.startswith(_REASONING_MODELS):
                return 400, "`reasoning_effort` is not supported with this model", None
            if body["reasoning_effort"] not in ("none", "default", "low", "medium", "high"):
                return 400, "'reasoning_effort' : value is not one of the allowed values", None
        tier = body.get("service_tier")
        if tier is not None and tier not in ("auto", "on_demand", "flex", "performance"):
            return 400, "'service_tier' : value is not one of the allowed values", None
        return None

    def _tool_calls(self, body: dict) -> list[dict]:
        """The tool calls this request answers with: [] unless tools are offered and wanted.

        Decided from the last user message, once per message: after the
        assistant has called tools for it, the next request gets the answer.
        """
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("function")]
        if not tools or body.get("tool_choice") == "none":
            return []
        messages = body["messages"]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            return []
        after = messages[users[-1] + 1 :]
        if any(m.get("role") == "assistant" and m.get("tool_calls") for m in after):
            return []
        wanted = self.choose_tools(_text_of(messages[users[-1]].get("content")), tools)
        return [
            {
                "id": "call_" + uuid.uuid4().hex[:24],
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
            for name, arguments in wanted
        ]

    def _answer(self, messages: list[dict]) -> str:
        """The reply text: tool results not passed on yet, then (if the user spoke last) a reply."""
        pending = [(i, r) for i, r in tool_results(messages) if i not in self.answered_calls]
        if not pending:
            return self.reply(messages)
        self.answered_calls.update(i for i, _ in pending)
        text = " ".join(r for _, r in pending)
        if messages[-1].get("role") == "user":
            text += " " + self.reply(messages)
        return text

    async def _chat_inner(self, request, rec, request_id, drop: bool) -> web.StreamResponse:
        t0 = rec.received_at
        body = await self._read_json(request, rec, request_id)
        if isinstance(body, web.Response):
            return body
        problem = self._validate_chat(body)
        if problem:
            status, message, code = problem
            return self._error(rec, request_id, status, message, code=code)

        messages = body["messages"]
        calls = self._tool_calls(body)
        text = "" if calls else self._answer(messages)
        tokens = tokenize(text)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish_reason = "tool_calls" if calls else "stop"
        if limit is not None and len(tokens) > limit:
            tokens, finish_reason = tokens[:limit], "length"
        prompt_tokens = max(1, sum(len(_text_of(m.get("content"))) for m in messages) // 4)
        ttft = rec.injected_delay = self.llm_ttft.sample(self._rng)
        chat_id = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        model = body["model"]
        fingerprint = "fp_" + uuid.uuid5(uuid.NAMESPACE_DNS, model).hex[:10]

        def usage(completion_tokens: int, started: float) -> dict:
            total = time.monotonic() - t0
            queue = min(ttft, total) * 0.8
            prompt_time = min(ttft, total) * 0.2
            completion_time = max(0.0, total - queue - prompt_time)
            return {
                "queue_time": round(queue, 9),
                "prompt_tokens": prompt_tokens,
                "prompt_time": round(prompt_time, 9),
                "completion_tokens": completion_tokens,
                "completion_time": round(completion_time, 9),
                "total_tokens": prompt_tokens + completion_tokens,
                "total_time": round(prompt_time + completion_time, 9),
            }

        if not body.get("stream"):
            await self._sleep_until(t0, ttft + self.llm_token_interval * max(0, len(tokens) - 1))
            payload = {
                "id": chat_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(tokens) if not calls else None,
                            **({"tool_calls": calls} if calls else {}),
                        },
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": usage(len(tokens), t0),
                "usage_breakdown": None,
                "system_fingerprint": fingerprint,
                "x_groq": {"id": request_id},
                "service_tier": "on_demand",
            }
            return await self._answer_json(request, rec, request_id, payload, drop)

        def chunk(delta: dict, finish: str | None = None, **extra) -> bytes:
            data = {
                "id": chat_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": fingerprint,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                **extra,
            }
            return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

        await self._sleep_until(t0, ttft)
        headers = self._headers(request_id)
        headers["Content-Type"] = "text/event-stream"
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        rec.status = 200
        started = time.monotonic()
        await response.write(chunk({"role": "assistant", "content": ""}, x_groq={"id": request_id}))
        for delta in _tool_call_deltas(calls):
            if self.llm_token_interval > 0:
                await asyncio.sleep(self.llm_token_interval)
            await response.write(chunk(delta))
        cut_after = max(1, len(tokens) // 2) if drop else None
        for i, token in enumerate(tokens):
            if i and self.llm_token_interval > 0:
                await asyncio.sleep(self.llm_token_interval)
            await response.write(chunk({"content": token}))
            if cut_after is not None and i + 1 >= cut_after:
                self._cut(request)
                raise _Abort
        final_usage = usage(
            len(tokens) + sum(len(c["function"]["arguments"]) // 4 for c in calls), started
        )
        await response.write(
            chunk({}, finish_reason, x_groq={"id": request_id, "usage": final_usage})
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            data = {
                "id": chat_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": fingerprint,
                "choices": [],
                "usage": final_usage,
                "x_groq": {"id": request_id},
            }
            await response.write(f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _answer_json(self, request, rec, request_id, payload, drop: bool):
        """A JSON answer, or with ``drop`` one cut off half-way."""
        if drop:
            return await self._drop_json(request, rec, request_id, payload)
        rec.status = 200
        return web.json_response(payload, headers=self._headers(request_id))

    async def _drop_json(self, request, rec, request_id, payload) -> web.StreamResponse:
        """Start a JSON response (headers and half the body), then cut the connection."""
        body = json.dumps(payload).encode()
        headers = self._headers(request_id)
        headers["Content-Type"] = "application/json"
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        rec.status = 200
        await response.write(body[: len(body) // 2])
        await asyncio.sleep(0.01)
        self._cut(request)
        raise _Abort

    # ---------------------------------------------------------- transcriptions

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "transcriptions", self._transcriptions_inner)

    async def _transcriptions_inner(self, request, rec, request_id, drop: bool):
        t0 = rec.received_at
        if request.content_type != "multipart/form-data":
            return self._error(
                rec,
                request_id,
                400,
                "request Content-Type isn't multipart/form-data: "
                f"got {request.content_type or 'none'!r}",
            )
        form: dict[str, Any] = {}
        upload: UploadedFile | None = None
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file":
                data = await part.read(decode=False)
                upload = UploadedFile(
                    filename=part.filename or "",
                    content_type=part.headers.get("Content-Type", ""),
                    data=bytes(data),
                )
            elif part.name:
                value = await part.text()
                if part.name.endswith("[]"):
                    form.setdefault(part.name, []).append(value)
                else:
                    form[part.name] = value
        rec.form = form
        rec.file = upload
        rec.model = form.get("model")

        def bad(message: str, code: str | None = None, status: int = 400):
            return self._error(rec, request_id, status, message, code=code)

        model = form.get("model")
        if not model:
            return bad("'model' : property 'model' is missing")
        if model not in self.stt_models:
            if model in self.chat_models or model in self.tts_models:
                return bad(f"model `{model}` does not support audio transcription")
            return bad(
                f"The model `{model}` does not exist or you do not have access to it.",
                "model_not_found",
                404,
            )
        if upload is None and not form.get("url"):
            return bad("either file or url must be provided")
        if upload is None:
            return bad("url downloads are not supported by this fake")
        if len(upload.data) > STT_MAX_FILE_BYTES:
            return bad(
                "Request Entity Too Large: file size must be at most 25 MB",
                "request_too_large",
                413,
            )
        ext = upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else ""
        if ext not in STT_FILE_TYPES:
            return bad(f"file must be one of the following types: [{' '.join(STT_FILE_TYPES)}]")
        response_format = form.get("response_format", "json")
        if response_format not in STT_RESPONSE_FORMATS:
            return bad(
                f"response_format must be one of [{' '.join(STT_RESPONSE_FORMATS)}]",
            )
        language = form.get("language")
        if language is not None and not re.fullmatch(r"[a-z]{2,3}", language):
            return bad(f"invalid language: {language!r} is not a valid ISO-639-1 language code")
        temperature = form.get("temperature")
        if temperature is not None:
            try:
                value = float(temperature)
            except ValueError:
                value = -1.0
            if not 0 <= value <= 1:
                return bad("'temperature' : number must be between 0 and 1")

        duration = None
        if ext == "wav":
            try:
                with wave.open(io.BytesIO(upload.data)) as w:
                    duration = w.getnframes() / w.getframerate()
            except (wave.Error, EOFError, ZeroDivisionError, struct.error):
                return bad("could not process file - is it a valid media file?")
            if duration < 0.01:
                return bad("Audio file is too short. Minimum audio length is 0.01 seconds.")
        if duration is None:
            duration = max(0.01, len(upload.data) / 16000)

        text = self.transcript(upload.data)
        rec.injected_delay = self.stt_latency.sample(self._rng)
        await self._sleep_until(t0, rec.injected_delay)
        if response_format == "text":
            payload_bytes = (" " + text + "\n").encode()
            if drop:
                return await self._drop_json(request, rec, request_id, " " + text)
            rec.status = 200
            return web.Response(
                body=payload_bytes,
                content_type="text/plain",
                charset="utf-8",
                headers=self._headers(request_id),
            )
        payload: dict[str, Any] = {"text": " " + text, "x_groq": {"id": request_id}}
        if response_format == "verbose_json":
            payload = {
                "task": "transcribe",
                "language": _LANGUAGE_NAMES.get(language or "en", language or "english"),
                "duration": round(duration, 2),
                "text": " " + text,
                "segments": [
                    {
                        "id": 0,
                        "seek": 0,
                        "start": 0.0,
                        "end": round(duration, 2),
                        "text": " " + text,
                        "tokens": [50365 + i for i in range(len(tokenize(text)))],
                        "temperature": float(temperature or 0.0),
                        "avg_logprob": -0.21,
                        "compression_ratio": 1.1,
                        "no_speech_prob": 0.01,
                    }
                ],
                "x_groq": {"id": request_id},
            }
        return await self._answer_json(request, rec, request_id, payload, drop)

    # ------------------------------------------------------------------ speech

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "speech", self._speech_inner)

    async def _speech_inner(self, request, rec, request_id, drop: bool):
        t0 = rec.received_at
        body = await self._read_json(request, rec, request_id)
        if isinstance(body, web.Response):
            return body

        def bad(message: str, code: str | None = None, status: int = 400):
            return self._error(rec, request_id, status, message, code=code)

        for key in body:
            if key not in ("model", "input", "voice", "response_format", "sample_rate", "speed"):
                return bad(f"property '{key}' is unsupported")
        for key in ("model", "input", "voice"):
            if key not in body:
                return bad(f"'{key}' : property '{key}' is missing")
        model, text, voice = body["model"], body["input"], body["voice"]
        if model not in self.tts_models:
            if model in self.chat_models or model in self.stt_models:
                return bad(f"model `{model}` does not support text to speech")
            return bad(
                f"The model `{model}` does not exist or you do not have access to it.",
                "model_not_found",
                404,
            )
        if not isinstance(text, str) or not text.strip():
            return bad("'input' : input must not be empty")
        if len(text) > self.TTS_MAX_INPUT_CHARS:
            return bad(
                f"'input' : input must be at most {self.TTS_MAX_INPUT_CHARS} characters "
                f"(got {len(text)})"
            )
        voices = ORPHEUS_VOICES.get(model)
        if voices is not None and voice not in voices:
            return bad(f"voice must be one of [{' '.join(voices)}]")
        response_format = body.get("response_format", "wav")
        if response_format != "wav":
            return bad(f"response_format `{response_format}` is not supported; must be wav")
        sample_rate = body.get("sample_rate", TTS_DEFAULT_SAMPLE_RATE)
        if sample_rate not in TTS_SAMPLE_RATES:
            return bad(f"sample_rate must be one of [{' '.join(str(r) for r in TTS_SAMPLE_RATES)}]")
        speed = body.get("speed", 1.0)
        if not isinstance(speed, int | float) or not 0.5 <= speed <= 5:
            return bad("'speed' : number must be between 0.5 and 5")

        audio = wav_bytes(speech_like_pcm(text, sample_rate).tobytes(), sample_rate)
        rec.injected_delay = self.tts_latency.sample(self._rng)
        await self._sleep_until(t0, rec.injected_delay)
        headers = self._headers(request_id)
        headers["Content-Type"] = "audio/wav"
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = len(audio)
        await response.prepare(request)
        rec.status = 200
        step = max(1, self.tts_chunk_bytes)
        for offset in range(0, len(audio), step):
            if drop and offset >= len(audio) // 2:
                await asyncio.sleep(0.01)
                self._cut(request)
                raise _Abort
            await response.write(audio[offset : offset + step])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ models

    def _model_object(self, model_id: str) -> dict:
        owned_by, context_window, max_completion = _MODEL_INFO.get(
            model_id, ("Groq", 131072, 32768)
        )
        return {
            "id": model_id,
            "object": "model",
            "created": self._created,
            "owned_by": owned_by,
            "active": True,
            "context_window": context_window,
            "public_apps": None,
            "max_completion_tokens": max_completion,
        }

    def _all_models(self) -> list[str]:
        return list(dict.fromkeys(self.chat_models + self.stt_models + self.tts_models))

    async def _models(self, request: web.Request) -> web.StreamResponse:
        async def inner(request, rec, request_id, drop):
            payload = {
                "object": "list",
                "data": [self._model_object(m) for m in self._all_models()],
            }
            return await self._answer_json(request, rec, request_id, payload, drop)

        return await self._serve(request, "models", inner)

    async def _model(self, request: web.Request) -> web.StreamResponse:
        async def inner(request, rec, request_id, drop):
            model_id = request.match_info["model"]
            rec.model = model_id
            if model_id not in self._all_models():
                return self._error(
                    rec,
                    request_id,
                    404,
                    f"The model `{model_id}` does not exist or you do not have access to it.",
                    code="model_not_found",
                )
            payload = self._model_object(model_id)
            return await self._answer_json(request, rec, request_id, payload, drop)

        return await self._serve(request, "models", inner)

    async def _unknown(self, request: web.Request) -> web.Response:
        rec = self._record(request, "unknown")
        rec.outcome = "failed"
        if not rec.authorized:
            return self._error(rec, _request_id(), 401, "Invalid API Key", code="invalid_api_key")
        return self._error(
            rec,
            _request_id(),
            404,
            f"Unknown request URL: {request.method} {request.path}. Please check the URL for "
            "typos, or see the docs at https://console.groq.com/docs/",
            code="unknown_url",
        )


_LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "ja": "Japanese",
    "zh": "Chinese",
    "ar": "Arabic",
}
