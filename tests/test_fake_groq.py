"""The Groq fake, driven by the real pipecat Groq services and the real groq / openai SDKs."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave

import aiohttp
import groq
import httpx
import numpy as np
import openai
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMTextFrame,
    MetricsFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData
from pipecat.pipeline.worker import PipelineParams
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.services.groq.llm import GroqLLMService
from pipecat.services.groq.stt import GroqSTTService
from pipecat.services.groq.tts import GroqTTSService
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.errors import ErrorCategory

from testkit.fakes.common import Latency, speech_like_pcm
from testkit.fakes.groq import DEFAULT_TRANSCRIPT, FakeGroq, default_reply, tokenize

KEY = "gsk_fake_valid_key"
MODEL = "llama-3.1-8b-instant"
QUESTION = "What is the tallest mountain in Europe?"


@pytest.fixture
async def fake():
    async with FakeGroq(api_key=KEY) as groq_fake:
        yield groq_fake


@pytest.fixture
async def sdk(fake):
    """Make real ``groq.AsyncGroq`` clients for the fake; all closed after the test."""
    clients = []

    def make(**kwargs) -> groq.AsyncGroq:
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("base_url", fake.base_url)
        clients.append(groq.AsyncGroq(**kwargs))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


def llm_service(fake: FakeGroq, **kwargs) -> GroqLLMService:
    return GroqLLMService(
        api_key=kwargs.pop("api_key", KEY),
        base_url=fake.base_url + "/openai/v1",
        settings=GroqLLMService.Settings(model=kwargs.pop("model", MODEL)),
        **kwargs,
    )


def context_frame(text: str = QUESTION) -> LLMContextFrame:
    return LLMContextFrame(LLMContext(messages=[{"role": "user", "content": text}]))


async def run_service(service, **kwargs):
    """pipecat's run_test, then close the service's HTTP client.

    None of pipecat's Groq services close their SDK client when the pipeline ends,
    so without this their keep-alive sockets linger until garbage collection.
    """
    try:
        return await run_test(service, **kwargs)
    finally:
        await service._client.close()


async def run_llm(llm: GroqLLMService, text: str = QUESTION):
    down, up = await run_service(
        llm,
        frames_to_send=[context_frame(text)],
        pipeline_params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
    )
    tokens = [f.text for f in down if isinstance(f, LLMTextFrame)]
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    return down, tokens, errors


async def sse_events(resp: aiohttp.ClientResponse) -> list:
    events = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --------------------------------------------------------------------------- LLM


async def test_llm_service_streams_the_reply_with_usage(fake):
    down, tokens, errors = await run_llm(llm_service(fake))

    assert not errors
    expected = default_reply([{"role": "user", "content": QUESTION}])
    assert "".join(tokens) == expected
    assert len(tokens) == len(expected.split())  # one frame per streamed token
    usage = [
        d.value
        for f in down
        if isinstance(f, MetricsFrame)
        for d in f.data
        if isinstance(d, LLMUsageMetricsData)
    ]
    assert len(usage) == 1
    assert usage[0].completion_tokens == len(tokens)
    assert usage[0].total_tokens == usage[0].prompt_tokens + usage[0].completion_tokens

    (req,) = fake.requests
    assert req.path == "/openai/v1/chat/completions" and req.model == MODEL
    assert req.json["stream"] is True
    assert req.json["stream_options"] == {"include_usage": True}
    assert req.json["messages"] == [{"role": "user", "content": QUESTION}]
    assert "authorization" not in {k.lower() for k in req.headers}
    assert KEY not in repr(req)
    assert fake.stats["chat"] == {"ok": 1, "failed": 0, "cancelled": 0}
    assert fake.open_responses == 0


async def test_llm_custom_reply_and_ttft(fake):
    fake.reply = lambda messages: f"Echo: {messages[-1]['content']}"
    fake.llm_ttft = Latency(median=0.25)
    fake.llm_token_interval = 0.02
    llm = llm_service(fake)
    start = time.monotonic()
    _, tokens, errors = await run_llm(llm, "hello there")
    assert not errors
    assert "".join(tokens) == "Echo: hello there"
    assert time.monotonic() - start >= 0.25 + 2 * 0.02


async def test_stream_wire_format_matches_groq(fake):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(fake.base_url + "/openai/v1/chat/completions", json=body, headers=auth()) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        request_id = resp.headers["x-request-id"]
        assert request_id.startswith("req_")
        assert "x-ratelimit-remaining-tokens" in resp.headers
        events = await sse_events(resp)

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    first, final, usage_chunk = chunks[0], chunks[-2], chunks[-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["x_groq"] == {"id": request_id}
    assert final["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    x_usage = final["x_groq"]["usage"]
    for key in ("queue_time", "prompt_time", "completion_time", "total_time"):
        assert isinstance(x_usage[key], float)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == x_usage
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == default_reply(body["messages"])
    assert x_usage["completion_tokens"] == len(chunks) - 3


async def test_max_tokens_stops_with_length(fake, sdk):
    client = sdk()
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        stream=True,
        max_completion_tokens=3,
    )
    chunks = [c async for c in stream]
    expected = "".join(tokenize(default_reply([{"role": "user", "content": QUESTION}]))[:3])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].x_groq.usage.completion_tokens == 3
    # Without include_usage there is no top-level usage chunk: usage is only in x_groq.
    assert all(c.choices for c in chunks)

    plain = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 2
    assert plain.x_groq.id.startswith("req_")


async def test_client_disconnect_mid_stream_is_clean(fake, sdk):
    fake.llm_token_interval = 0.05
    client = sdk()
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            break
    await stream.close()
    assert await fake.wait_idle()
    assert fake.stats["chat"] == {"ok": 0, "failed": 0, "cancelled": 1}


# --------------------------------------------------------------------------- STT


def speech_frames(seconds: float, rate: int = 16000, chunk: float = 0.02):
    pcm = speech_like_pcm("x" * int(seconds * 15), rate).tobytes()
    step = int(rate * chunk) * 2
    return [
        InputAudioRawFrame(audio=pcm[i : i + step], sample_rate=rate, num_channels=1)
        for i in range(0, len(pcm), step)
    ]


async def test_stt_service_transcribes_a_segment(fake):
    heard: list[bytes] = []

    def transcript(wav: bytes) -> str:
        heard.append(wav)
        return DEFAULT_TRANSCRIPT

    fake.transcript = transcript
    fake.stt_latency = Latency(median=0.1)
    stt = GroqSTTService(api_key=KEY, base_url=fake.base_url + "/openai/v1")
    down, up = await run_service(
        stt,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            *speech_frames(1.0),
            VADUserStoppedSpeakingFrame(),
            SleepFrame(0.3),
        ],
        pipeline_params=PipelineParams(audio_in_sample_rate=16000),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    (frame,) = [f for f in down if isinstance(f, TranscriptionFrame)]
    assert frame.text == DEFAULT_TRANSCRIPT
    assert frame.result.x_groq == {"id": frame.result.x_groq["id"]}

    (req,) = fake.requests
    assert req.path == "/openai/v1/audio/transcriptions"
    assert req.form == {
        "model": "whisper-large-v3-turbo",
        "response_format": "json",
        "language": "en",
    }
    assert req.file.filename == "audio.wav" and req.file.content_type == "audio/wav"
    with wave.open(io.BytesIO(heard[0])) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        assert w.getnframes() / 16000 >= 1.0  # the segment (plus trailing silence)


async def test_transcription_formats_and_validation(fake, sdk):
    client = sdk()
    audio = io.BytesIO()
    with wave.open(audio, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(16000, dtype=np.int16).tobytes())
    wav = audio.getvalue()

    verbose = await client.audio.transcriptions.create(
        file=("a.wav", wav), model="whisper-large-v3", response_format="verbose_json"
    )
    assert verbose.text.strip() == DEFAULT_TRANSCRIPT
    assert verbose.duration == pytest.approx(1.0)
    text = await client.audio.transcriptions.create(
        file=("a.wav", wav), model="whisper-large-v3", response_format="text"
    )
    assert text.strip() == DEFAULT_TRANSCRIPT

    with pytest.raises(groq.NotFoundError) as err:
        await client.audio.transcriptions.create(file=("a.wav", wav), model="whisper-tiny")
    assert err.value.body["error"]["code"] == "model_not_found"
    with pytest.raises(groq.BadRequestError, match="following types"):
        await client.audio.transcriptions.create(file=("a.txt", wav), model="whisper-large-v3")
    with pytest.raises(groq.BadRequestError, match="valid media file"):
        await client.audio.transcriptions.create(
            file=("a.wav", b"not audio"), model="whisper-large-v3"
        )

    async with aiohttp.ClientSession() as http:
        url = fake.base_url + "/openai/v1/audio/transcriptions"
        form = aiohttp.FormData({"model": "whisper-large-v3"}, default_to_multipart=True)
        async with http.post(url, data=form, headers=auth()) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["message"] == "either file or url must be provided"
        async with http.post(url, json={"model": "whisper-large-v3"}, headers=auth()) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error["type"] == "invalid_request_error"
            assert "multipart/form-data" in error["message"]


# --------------------------------------------------------------------------- TTS

SENTENCE = "The tallest mountain in Europe is Mount Elbrus."


async def test_tts_service_reads_groq_base_url(fake, monkeypatch):
    monkeypatch.setenv("GROQ_BASE_URL", fake.base_url)
    fake.tts_latency = Latency(median=0.05)
    tts = GroqTTSService(api_key=KEY)
    down, up = await run_service(
        tts,
        frames_to_send=[TTSSpeakFrame(SENTENCE)],
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and {f.sample_rate for f in audio} == {24000}
    seconds = sum(len(f.audio) for f in audio) / 2 / 24000
    assert seconds == pytest.approx(len(SENTENCE) / 15, rel=0.05)

    (req,) = fake.requests
    assert req.path == "/openai/v1/audio/speech"
    assert req.json == {
        "input": SENTENCE,
        "model": "canopylabs/orpheus-v1-english",
        "voice": "autumn",
        "response_format": "wav",
        "speed": 1.0,
    }
    assert fake.open_responses == 0


async def test_speech_endpoint_streams_wav_and_validates(fake):
    async with aiohttp.ClientSession() as http:
        url = fake.base_url + "/openai/v1/audio/speech"
        body = {
            "model": "canopylabs/orpheus-v1-english",
            "voice": "troy",
            "input": "Hi there.",
            "response_format": "wav",
            "sample_rate": 16000,
        }
        async with http.post(url, json=body, headers=auth()) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
            chunks = [c async for c in resp.content.iter_chunked(4096)]
        with wave.open(io.BytesIO(b"".join(chunks))) as w:
            assert w.getframerate() == 16000 and w.getsampwidth() == 2
            assert w.getnchannels() == 1

        for patch, status, needle in [
            ({"voice": "alloy"}, 400, "voice must be one of"),
            ({"input": "x" * 201}, 400, "at most 200 characters"),
            ({"model": "tts-1"}, 404, "does not exist"),
            ({"sample_rate": 12345}, 400, "sample_rate"),
            ({"response_format": "mp3"}, 400, "response_format"),
        ]:
            async with http.post(url, json={**body, **patch}, headers=auth()) as resp:
                assert resp.status == status
                assert needle in (await resp.json())["error"]["message"]


# ------------------------------------------------------------------ models, auth


async def test_models_list_via_groq_sdk(fake, sdk):
    client = sdk()
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert ids == fake.chat_models + fake.stt_models + fake.tts_models
    first = models.data[0]
    assert first.object == "model" and first.active is True and first.context_window > 0
    assert first.owned_by == "Meta"
    assert (await client.models.retrieve("openai/gpt-oss-20b")).owned_by == "OpenAI"
    with pytest.raises(groq.NotFoundError):
        await client.models.retrieve("gpt-4o")


async def test_wrong_key_gets_groq_401(fake, sdk):
    client = sdk(api_key="gsk_wrong")
    with pytest.raises(groq.AuthenticationError) as err:
        await client.models.list()
    assert err.value.status_code == 401
    # The groq SDK keeps the whole body (the openai SDK unwraps "error").
    assert err.value.body == {
        "error": {
            "message": "Invalid API Key",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    async with (
        aiohttp.ClientSession() as http,
        http.get(fake.base_url + "/openai/v1/models") as resp,
    ):
        assert resp.status == 401
        assert await resp.json() == {
            "error": {
                "message": "Invalid API Key",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    assert not any(r.authorized for r in fake.requests)

    _, tokens, errors = await run_llm(llm_service(fake, api_key="gsk_wrong"))
    assert not tokens and len(errors) == 1
    assert isinstance(errors[0].exception, openai.AuthenticationError)
    assert errors[0].exception.code == "invalid_api_key"


async def test_chat_request_validation(fake, sdk):
    client = sdk(max_retries=0)
    with pytest.raises(groq.NotFoundError) as err:
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.body["error"]["code"] == "model_not_found"
    with pytest.raises(groq.BadRequestError, match="minimum number of items"):
        await client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(groq.BadRequestError, match="property 'timestamp' is unsupported"):
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi", "timestamp": 1}]
        )
    with pytest.raises(groq.BadRequestError, match="reasoning_effort"):
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], reasoning_effort="low"
        )
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            fake.base_url + "/openai/v1/chat/completions", data=b"{}", headers=auth()
        ) as resp,
    ):
        assert resp.status == 400
        assert "application/json" in (await resp.json())["error"]["message"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(fake.base_url + "/openai/v1/nope", headers=auth()) as resp,
    ):
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "unknown_url"


# ---------------------------------------------------------------- failure modes


@pytest.mark.parametrize(
    ("mode", "exc", "category"),
    [
        ("401", openai.AuthenticationError, ErrorCategory.AUTHENTICATION),
        ("429", openai.RateLimitError, ErrorCategory.RATE_LIMIT),
        ("500", openai.InternalServerError, ErrorCategory.SERVER),
        ("503", openai.InternalServerError, ErrorCategory.SERVER),
        # An SDK timeout is not in pipecat's TIMEOUT_EXCEPTIONS (raw httpx only), so it
        # is reported as a plain completion error and on_completion_timeout never fires.
        ("hang", openai.APITimeoutError, ErrorCategory.UNKNOWN),
        ("drop", openai.APIConnectionError, ErrorCategory.UNKNOWN),
    ],
)
async def test_chat_failure_modes_reach_pipecat_as_error_frames(fake, mode, exc, category):
    fake.fail("chat", mode, times=None)
    llm = llm_service(fake)
    # pipecat's defaults: openai SDK timeout 600 s with 2 retries. Short and single here.
    llm._client = llm._client.with_options(timeout=0.5, max_retries=0)
    _, tokens, errors = await run_llm(llm)
    assert len(errors) == 1, errors
    assert type(errors[0].exception) is exc
    assert errors[0].category == category
    assert errors[0].error.startswith("Error during completion: ")
    if mode == "drop":
        assert tokens  # part of the answer arrived before the cut
        assert "".join(tokens) != default_reply([{"role": "user", "content": QUESTION}])
    else:
        assert not tokens
    # A refused key is permanent: pipecat stops giving the service work.
    assert llm.is_usable is (mode != "401")
    assert await fake.wait_idle()
    assert fake.stats["chat"]["failed"] == 1 and fake.stats["chat"]["ok"] == 0


@pytest.mark.parametrize(
    ("mode", "exc"),
    [
        ("401", groq.AuthenticationError),
        ("429", groq.RateLimitError),
        ("500", groq.InternalServerError),
        ("503", groq.InternalServerError),
        ("hang", groq.APITimeoutError),
    ],
)
async def test_failure_modes_raise_the_sdk_exceptions(fake, sdk, mode, exc):
    fake.fail("*", mode, times=None)
    client = sdk(timeout=0.3, max_retries=0)
    with pytest.raises(exc) as err:
        await client.models.list()
    if mode == "429":
        assert err.value.response.headers["retry-after"] == "1"
        assert err.value.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert err.value.body["error"]["code"] == "rate_limit_exceeded"
    if mode in ("500", "503"):
        assert err.value.status_code == int(mode)
    with pytest.raises(exc):
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert await fake.wait_idle()


async def test_drop_cuts_a_started_stream(fake, sdk):
    fake.fail("chat", "drop")
    client = sdk(max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    got = []
    # The groq SDK lets httpx's error through mid-stream (the openai SDK wraps it in
    # APIConnectionError, as the pipecat test above shows).
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        async for chunk in stream:
            got.append(chunk)
    assert got and got[-1].choices[0].finish_reason is None
    # The failure was for one request only: the next one is whole.
    client = sdk()
    done = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}]
    )
    assert done.choices[0].finish_reason == "stop"
    assert await fake.wait_idle()


async def test_sdk_retries_recover_from_one_failure(fake):
    """pipecat keeps the openai SDK's 2 retries: one 429 costs retry-after (1 s), no error."""
    fake.fail("chat", "429")
    start = time.monotonic()
    _, tokens, errors = await run_llm(llm_service(fake))
    assert not errors and tokens
    assert time.monotonic() - start >= 1.0
    assert [r.injected for r in fake.requests] == ["429", None]


async def test_speech_drop_is_retried_by_the_groq_sdk(fake, monkeypatch):
    monkeypatch.setenv("GROQ_BASE_URL", fake.base_url)
    fake.fail("speech", "drop")
    tts = GroqTTSService(api_key=KEY)
    down, up = await run_service(
        tts,
        frames_to_send=[TTSSpeakFrame(SENTENCE)],
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert [r.injected for r in fake.requests] == ["drop", None]
    assert fake.stats["speech"]["failed"] == 1 and fake.stats["speech"]["ok"] == 1


async def test_hang_is_released_on_stop():
    fake = await FakeGroq(api_key=KEY).start()
    fake.fail("models", "hang")
    async with groq.AsyncGroq(api_key=KEY, base_url=fake.base_url, max_retries=0) as client:
        task = asyncio.create_task(client.models.list())
        await asyncio.sleep(0.2)
        assert fake.open_responses == 1 and not task.done()
        await fake.stop()
        with pytest.raises(groq.APIConnectionError):
            await task
    assert fake.open_responses == 0
    assert fake.stats["models"]["failed"] == 1


def test_fail_rejects_unknown_endpoint_or_mode():
    fake = FakeGroq()
    with pytest.raises(ValueError):
        fake.fail("embeddings", "500")
    with pytest.raises(ValueError):
        fake.fail("chat", "teapot")
    fake.fail("*", "500")
    fake.recover()
    assert fake._take_failure("chat") is None


@pytest.mark.parametrize("mode", ["401", "503", "hang"])
async def test_stt_and_tts_failures_become_error_frames(fake, monkeypatch, mode):
    """Both services catch everything and yield a bare ErrorFrame (no exception attached),
    so pipecat can't classify it: category UNKNOWN, and a refused key leaves them usable."""
    fake.fail("*", mode, times=None)
    stt = GroqSTTService(api_key=KEY, base_url=fake.base_url + "/openai/v1")
    stt._client = stt._client.with_options(timeout=0.5, max_retries=0)
    down, up = await run_service(
        stt,
        frames_to_send=[
            VADUserStartedSpeakingFrame(),
            *speech_frames(0.5),
            VADUserStoppedSpeakingFrame(),
            SleepFrame(0.1),
        ],
        pipeline_params=PipelineParams(audio_in_sample_rate=16000),
    )
    assert not [f for f in down if isinstance(f, TranscriptionFrame)]
    (error,) = [f for f in up if isinstance(f, ErrorFrame)]
    assert error.error.startswith("Unknown error occurred: ")
    assert error.category == ErrorCategory.UNKNOWN and stt.is_usable

    monkeypatch.setenv("GROQ_BASE_URL", fake.base_url)
    # A silent context is only closed after stop_frame_timeout_s (3 s by default).
    tts = GroqTTSService(api_key=KEY, stop_frame_timeout_s=0.3)
    tts._client = tts._client.with_options(timeout=0.5, max_retries=0)
    down, up = await run_service(
        tts,
        frames_to_send=[TTSSpeakFrame(SENTENCE)],
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    assert not [f for f in down if isinstance(f, TTSAudioRawFrame)]
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    # stop_frame_timeout_s is an idle timer blind to the request in flight: when the
    # request outlasts it, "no audio" is reported before the request's own error.
    assert any(e.startswith("Unknown error occurred: ") for e in errors)
    assert any("completed with no audio" in e for e in errors)
    assert await fake.wait_idle()
    assert fake.stats["transcriptions"]["failed"] == 1 and fake.stats["speech"]["failed"] == 1


async def test_tts_input_over_orpheus_limit_is_refused(fake, monkeypatch):
    """Orpheus takes at most 200 characters; GroqTTSService sends what it is given."""
    monkeypatch.setenv("GROQ_BASE_URL", fake.base_url)
    # A silent context is only closed after stop_frame_timeout_s (3 s by default).
    tts = GroqTTSService(api_key=KEY, stop_frame_timeout_s=0.3)
    _, up = await run_service(
        tts,
        frames_to_send=[TTSSpeakFrame("word " * 50)],
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert "Error code: 400" in errors[0] and "at most 200 characters" in errors[0]
    assert fake.requests[0].status == 400


async def test_tts_slower_than_stop_frame_timeout_is_reported_silent_first(fake, monkeypatch):
    """GroqTTSService waits for the whole WAV (first byte = last byte), and pipecat closes a
    context that stays quiet for stop_frame_timeout_s (3 s default): a slow synthesis gets
    TTSStoppedFrame + "no audio" error first, then its audio anyway."""
    monkeypatch.setenv("GROQ_BASE_URL", fake.base_url)
    fake.tts_latency = Latency(median=0.6)
    tts = GroqTTSService(api_key=KEY, stop_frame_timeout_s=0.2)
    down, up = await run_service(
        tts,
        frames_to_send=[TTSSpeakFrame(SENTENCE)],
        pipeline_params=PipelineParams(audio_out_sample_rate=24000),
    )
    kinds = [type(f).__name__ for f in down if isinstance(f, TTSStoppedFrame | TTSAudioRawFrame)]
    assert kinds == ["TTSStoppedFrame", "TTSAudioRawFrame", "TTSStoppedFrame"]
    assert any("completed with no audio" in f.error for f in up if isinstance(f, ErrorFrame))


# --------------------------------------------------------------------------- tool calls

ORDER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} for an order",
            "parameters": {
                "type": "object",
                "properties": {"order_number": {"type": "string"}},
                "required": ["order_number"],
            },
        },
    }
    for name in ("lookup_order", "cancel_order")
] + [
    {
        "type": "function",
        "function": {
            "name": "time_in_city",
            "description": "the time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


async def test_streamed_tool_call_wire_format_matches_groq(fake):
    """First delta: index, id, type and name with empty arguments; then argument pieces."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Where is my order 1234?"}],
        "tools": ORDER_TOOLS,
        "stream": True,
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(fake.base_url + "/openai/v1/chat/completions", json=body, headers=auth()) as resp,
    ):
        assert resp.status == 200
        events = await sse_events(resp)

    assert events[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in events[1:-2]]
    opening = deltas[0]["tool_calls"]
    assert len(opening) == 1 and opening[0]["index"] == 0
    assert opening[0]["id"].startswith("call_") and opening[0]["type"] == "function"
    assert opening[0]["function"] == {"name": "lookup_order", "arguments": ""}
    pieces = [d["tool_calls"][0] for d in deltas[1:]]
    assert len(pieces) > 1 and all(set(p) == {"index", "function"} for p in pieces)
    arguments = "".join(p["function"]["arguments"] for p in pieces)
    assert json.loads(arguments) == {"order_number": "1234"}
    assert not any("content" in d and d["content"] for d in deltas)
    final = events[-2]["choices"][0]
    assert final["finish_reason"] == "tool_calls" and final["delta"] == {}


async def test_several_tool_calls_in_one_turn_and_the_answer_after_their_results(fake):
    """The openai SDK reassembles parallel calls; the follow-up speaks their results."""
    client = openai.AsyncOpenAI(api_key=KEY, base_url=fake.base_url + "/openai/v1")
    question = {
        "role": "user",
        "content": "Cancel order one two three four and what time is it in new york right now?",
    }
    try:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[question], tools=ORDER_TOOLS, stream=True
        )
        calls: dict[int, dict] = {}
        async for chunk in stream:
            for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] = call.id or entry["id"]
                if call.function:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
        assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
            ("cancel_order", {"order_number": "1234"}),
            ("time_in_city", {"city": "New York"}),
        ]
        assistant = {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in calls.values()
            ],
        }
        results = [
            {
                "role": "tool",
                "tool_call_id": calls[0]["id"],
                "content": '"Order 1234 is cancelled."',
            },
            {
                "role": "tool",
                "tool_call_id": calls[1]["id"],
                "content": '"It is noon in New York."',
            },
        ]
        answer = await client.chat.completions.create(
            model=MODEL, messages=[question, assistant, *results], tools=ORDER_TOOLS
        )
    finally:
        await client.close()
    message = answer.choices[0].message
    assert message.content == "Order 1234 is cancelled. It is noon in New York."
    assert not message.tool_calls and answer.choices[0].finish_reason == "stop"
    assert fake.requests_to("chat")[-1].messages[-1]["tool_call_id"] == calls[1]["id"]


async def test_no_tool_call_without_tools_offered_or_wanted(fake, sdk):
    client = sdk()
    plain = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Where is order 1234?"}]
    )
    assert plain.choices[0].message.content.startswith("You asked")
    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], tools=ORDER_TOOLS
    )
    assert not chat.choices[0].message.tool_calls
    assert chat.choices[0].message.content == default_reply([{"role": "user", "content": QUESTION}])
