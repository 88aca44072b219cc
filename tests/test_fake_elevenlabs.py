"""The ElevenLabs fake, driven by pipecat's real ElevenLabs service classes over TLS.

Reaching the fake: ``ElevenLabsTTSService(url=fake.ws_url)`` (``wss://127.0.0.1:PORT``),
``ElevenLabsRealtimeSTTService(base_url=fake.stt_host)`` (``127.0.0.1:PORT``, the
service always adds ``wss://``). Both connect with ``websockets``, which reads
``SSL_CERT_FILE`` per connection, so setting it with monkeypatch before the
pipeline starts is enough. aiohttp fixed its trust store at import, so the REST
check hands it an explicit SSL context.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import time
from collections.abc import Callable

import aiohttp
import httpx
import numpy as np
import pytest
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.elevenlabs.stt import CommitStrategy, ElevenLabsRealtimeSTTService
from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
from pipecat.workers.runner import WorkerRunner

from testkit.fakes.common import Latency, speech_like_pcm
from testkit.fakes.elevenlabs import DEFAULT_TRANSCRIPT, FakeElevenLabs

VOICE = "21m00Tcm4TlvDq8ikWAM"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


@pytest.fixture
async def fake(monkeypatch):
    async with FakeElevenLabs() as server:
        monkeypatch.setenv("SSL_CERT_FILE", server.cert_path)
        yield server


class Recorder(FrameProcessor):
    """Records the frames passing in one direction and lets a test wait for one."""

    def __init__(self, direction: FrameDirection):
        super().__init__()
        self.direction = direction
        self.frames: list[Frame] = []
        self._changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == self.direction:
            self.frames.append(frame)
            self._changed.set()
        await self.push_frame(frame, direction)

    def of(self, kind: type) -> list:
        return [f for f in self.frames if isinstance(f, kind)]

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds (re-checked on each frame and every 20 ms)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.02)


@contextlib.asynccontextmanager
async def running(service: FrameProcessor):
    """A started pipeline ``[up-recorder, service, down-recorder]``; stopped on exit."""
    up, down = Recorder(FrameDirection.UPSTREAM), Recorder(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(
        Pipeline([up, service, down]),
        cancel_on_idle_timeout=False,
        params=PipelineParams(audio_in_sample_rate=16000, audio_out_sample_rate=24000),
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 5)
        yield worker, up, down
    finally:
        await worker.cancel()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def tts_service(fake: FakeElevenLabs, **kwargs) -> ElevenLabsTTSService:
    return ElevenLabsTTSService(
        api_key=kwargs.pop("api_key", fake.api_key),
        url=fake.ws_url,
        settings=ElevenLabsTTSService.Settings(voice=VOICE, model="eleven_flash_v2_5"),
        **kwargs,
    )


def tts_connections(fake: FakeElevenLabs) -> list[dict]:
    return [r for r in fake.requests if r["endpoint"] == "tts"]


def audio_of(frames: list[Frame], context_id: str | None = None) -> list[TTSAudioRawFrame]:
    return [
        f
        for f in frames
        if isinstance(f, TTSAudioRawFrame) and (context_id is None or f.context_id == context_id)
    ]


# --- REST ----------------------------------------------------------------------------------


async def test_voices_and_models_over_https(fake):
    async with httpx.AsyncClient(base_url=fake.base_url) as client:  # reads SSL_CERT_FILE now
        voices = (await client.get("/v1/voices", headers={"xi-api-key": fake.api_key})).json()
        assert VOICE in [v["voice_id"] for v in voices["voices"]]
        assert {"voice_id", "name", "category", "labels"} <= set(voices["voices"][0])
        bad = await client.get("/v1/models", headers={"xi-api-key": "wrong"})
        assert bad.status_code == 401
        assert bad.json() == {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}

    # aiohttp built its trust store at import: hand it one that trusts the fake.
    context = ssl.create_default_context(cafile=fake.cert_path)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{fake.base_url}/v1/models", headers={"xi-api-key": fake.api_key}, ssl=context
        ) as response,
    ):
        models = await response.json()
    assert any(m["model_id"] == "eleven_flash_v2_5" and m["can_do_text_to_speech"] for m in models)

    fake.fail("voices", "429")
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        limited = await client.get("/v1/voices", headers={"xi-api-key": fake.api_key})
        assert limited.status_code == 429
        assert limited.json()["detail"]["status"] == "too_many_concurrent_requests"
        assert (await client.get("/v1/voices", headers={"xi-api-key": fake.api_key})).is_success
    assert all("xi-api-key" not in str(r) and fake.api_key not in str(r) for r in fake.requests)


async def test_voices_and_models_are_what_the_sdk_parses(fake):
    """The ``elevenlabs`` SDK reads the fake's lists, which its models (from the API) accept.

    The SDK parses leniently (a missing field is not an error), so the raw
    answers are also validated strictly against its pydantic models.
    """
    from elevenlabs import AsyncElevenLabs
    from elevenlabs.types import GetVoicesResponse, Model

    headers = {"xi-api-key": fake.api_key}
    async with httpx.AsyncClient() as http:
        client = AsyncElevenLabs(base_url=fake.base_url, api_key=fake.api_key, httpx_client=http)
        voices = await client.voices.get_all()
        models = await client.models.list()
        raw_voices = (await http.get(f"{fake.base_url}/v1/voices", headers=headers)).json()
        raw_models = (await http.get(f"{fake.base_url}/v1/models", headers=headers)).json()
    assert [(v.name, v.voice_id) for v in voices.voices] == [
        (v["name"], v["voice_id"]) for v in fake.voices
    ]
    assert "eleven_flash_v2_5" in [m.model_id for m in models if m.can_do_text_to_speech]
    GetVoicesResponse.model_validate(raw_voices)
    assert [Model.model_validate(m).model_id for m in raw_models] == [m.model_id for m in models]
    assert [r["status"] for r in fake.requests] == [200] * 4  # the SDK's key was accepted


# --- TTS -----------------------------------------------------------------------------------


async def test_tts_speaks_with_word_timestamps(fake):
    async with running(tts_service(fake)) as (worker, up, down):
        await worker.queue_frame(TTSSpeakFrame(SENTENCE))
        await down.wait_for(lambda: down.of(TTSStoppedFrame), timeout=10)

    audio = audio_of(down.frames)
    assert audio and all(f.sample_rate == 24000 for f in audio)
    seconds = sum(len(f.audio) for f in audio) / 2 / 24000
    assert seconds == pytest.approx(len(SENTENCE) / 15, rel=0.05)
    words = down.of(TTSTextFrame)
    # Word-level frames from the character alignment. The chunks pipecat sends
    # carry no trailing space, so the last word is only completed at the end of
    # the context and gets the previous word's timestamp (pipecat quirk).
    assert [f.text for f in words] == SENTENCE.split()
    assert all(a.pts < b.pts for a, b in itertools.pairwise(words[:-1]))
    assert words[-1].pts == words[-2].pts
    assert not up.of(ErrorFrame)

    sent = [m["message"] for m in fake.messages if m["endpoint"] == "tts"]
    first = sent[0]
    assert first["text"] == " " and "context_id" in first
    ctx = first["context_id"]
    kinds = [
        "flush" if m.get("flush") else "close" if m.get("close_context") else "text"
        for m in sent
        if m.get("context_id") == ctx
    ]
    assert kinds[-2:] == ["flush", "close"]
    assert fake.requests[0]["query"]["output_format"] == "pcm_24000"
    assert fake.open_contexts == 0


async def test_tts_first_audio_latency_is_applied(monkeypatch):
    async with FakeElevenLabs(tts_first_audio=Latency(0.4, 0.4)) as fake:
        monkeypatch.setenv("SSL_CERT_FILE", fake.cert_path)
        async with running(tts_service(fake)) as (worker, _up, down):
            start = time.monotonic()
            await worker.queue_frame(TTSSpeakFrame("Hello there."))
            await down.wait_for(lambda: audio_of(down.frames), timeout=5)
            assert time.monotonic() - start >= 0.38


async def test_tts_http_stream_as_the_sdk_reads_it(monkeypatch):
    """``POST .../stream`` (what ``text_to_speech.stream`` calls): audio after the latency."""
    from elevenlabs import AsyncElevenLabs
    from elevenlabs.core.api_error import ApiError

    async with FakeElevenLabs(tts_first_audio=Latency(0.3, 0.3)) as fake:
        monkeypatch.setenv("SSL_CERT_FILE", fake.cert_path)
        async with httpx.AsyncClient() as http:
            key = fake.api_key
            client = AsyncElevenLabs(base_url=fake.base_url, api_key=key, httpx_client=http)
            start = time.monotonic()
            chunks, first = [], None
            async for chunk in client.text_to_speech.stream(
                VOICE, text=SENTENCE, model_id="eleven_flash_v2_5", output_format="pcm_16000"
            ):
                first = first or time.monotonic() - start
                chunks.append(chunk)
            audio = np.frombuffer(b"".join(chunks), dtype=np.int16)
            assert first >= 0.29
            assert len(audio) / 16000 == pytest.approx(len(SENTENCE) / 15, rel=0.05)
            assert np.abs(audio).max() > 3000  # speech-like, not silence
            (generation,) = fake.tts_generations
            assert generation["text"] == SENTENCE and generation["injected_delay"] == 0.3

            stranger = AsyncElevenLabs(base_url=fake.base_url, api_key="wrong", httpx_client=http)
            with pytest.raises(ApiError) as refused:
                async for _ in stranger.text_to_speech.stream(VOICE, text="Hi."):
                    pass
            assert refused.value.status_code == 401


async def barge_in_cycles(
    fake, worker, down, n: int, streaming_for: float, llm_turns: bool
) -> None:
    for i in range(n):
        before = len(audio_of(down.frames))
        if llm_turns:
            await worker.queue_frame(LLMFullResponseStartFrame())
            await worker.queue_frame(LLMTextFrame(f"Turn {i}. {SENTENCE} "))
        else:
            await worker.queue_frame(TTSSpeakFrame(f"Turn {i}. {SENTENCE}"))
        await down.wait_for(
            lambda b=before: len(audio_of(down.frames)) > b or fake.closed_1008, timeout=10
        )
        if fake.closed_1008:
            return
        await asyncio.sleep(streaming_for)
        await worker.queue_frame(InterruptionFrame())
        if llm_turns:
            await worker.queue_frame(LLMFullResponseEndFrame())
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("llm_turns", [False, True], ids=["speak-frames", "llm-turns"])
async def test_ten_barge_ins_stay_within_the_context_limit(fake, llm_turns):
    # A barge-in needs the user to speak, so they come no faster than ~0.3 s
    # apart; the fake generates audio at 10x real time.
    async with running(tts_service(fake)) as (worker, up, down):
        await barge_in_cycles(fake, worker, down, 10, streaming_for=0.3, llm_turns=llm_turns)
        await worker.queue_frame(TTSSpeakFrame("Still here."))
        await down.wait_for(lambda: "Still" in [f.text for f in down.of(TTSTextFrame)], 10)
        assert fake.closed_1008 == 0
        assert fake.max_open_contexts_seen <= 3
        assert not up.of(ErrorFrame)
        await asyncio.sleep(0.5)
        assert fake.open_contexts == 0, "a context leaked"
    # Every context pipecat opened, it closed.
    sent = [m["message"] for m in fake.messages if m["endpoint"] == "tts"]
    opened = {m["context_id"] for m in sent if m.get("text") == " "}
    closed = {m["context_id"] for m in sent if m.get("close_context")}
    assert len(opened) == 11 and opened == closed


async def test_barge_ins_faster_than_generation_hit_the_1008_limit(monkeypatch):
    """pipecat sends close_context and opens the next context without waiting for
    isFinal, so contexts still flushing pile up (pipecat #4114/#4132)."""
    async with FakeElevenLabs(tts_speed=1.0) as fake:  # slow server-side generation
        monkeypatch.setenv("SSL_CERT_FILE", fake.cert_path)
        async with running(tts_service(fake)) as (worker, up, down):
            await barge_in_cycles(fake, worker, down, 7, streaming_for=0.0, llm_turns=False)
            await up.wait_for(lambda: up.of(ErrorFrame) or fake.closed_1008, timeout=5)
            assert fake.closed_1008 == 1
            assert fake.max_open_contexts_seen == 5
            # pipecat reconnects on its own (at once, no backoff on the first attempt);
            # text handed to it while it reconnects can be lost, so wait for that.
            await up.wait_for(lambda: len(tts_connections(fake)) >= 2, timeout=5)
            await asyncio.sleep(0.2)
            await worker.queue_frame(TTSSpeakFrame("Back again."))
            await down.wait_for(lambda: "Back" in [f.text for f in down.of(TTSTextFrame)], 20)
        assert len(tts_connections(fake)) >= 2


async def test_tts_wrong_key_yields_an_error_frame(fake):
    async with running(tts_service(fake, api_key="wrong-key")) as (_worker, up, down):
        await up.wait_for(lambda: up.of(ErrorFrame), timeout=15)
    assert fake.closed_1008 >= 1
    assert not audio_of(down.frames)


async def test_tts_drop_mid_stream_reconnects(fake):
    fake.fail("tts", "drop")
    async with running(tts_service(fake)) as (worker, _up, down):
        await worker.queue_frame(TTSSpeakFrame("This one is cut off."))
        await down.wait_for(lambda: audio_of(down.frames), timeout=10)
        first = audio_of(down.frames)[0].context_id
        # pipecat reconnects at once. Text handed over during that window can go
        # to a second socket nobody reads (see the report), so wait it out.
        await down.wait_for(
            lambda: len(tts_connections(fake)) == 2 and fake.open_connections == 1, timeout=5
        )
        await asyncio.sleep(0.2)
        await worker.queue_frame(TTSSpeakFrame("This one is heard."))
        await down.wait_for(
            lambda: any(f.context_id != first for f in audio_of(down.frames)), timeout=10
        )
        await down.wait_for(lambda: down.of(TTSStoppedFrame), timeout=5)
        # The cut utterance never gets a TTSStoppedFrame (no isFinal ever came).
        assert first not in {f.context_id for f in down.of(TTSStoppedFrame)}
    assert len(tts_connections(fake)) == 2


# --- STT -----------------------------------------------------------------------------------


def pcm_chunks(pcm: np.ndarray, rate: int = 16000, ms: int = 20):
    step = rate * ms // 1000
    for i in range(0, len(pcm), step):
        yield InputAudioRawFrame(
            audio=pcm[i : i + step].tobytes(), sample_rate=rate, num_channels=1
        )


async def play(worker, pcm: np.ndarray, realtime: float = 0.0):
    for frame in pcm_chunks(pcm):
        await worker.queue_frame(frame)
        await asyncio.sleep(realtime)


async def test_realtime_stt_manual_commit(fake):
    stt = ElevenLabsRealtimeSTTService(api_key=fake.api_key, base_url=fake.stt_host)
    speech = np.concatenate([speech_like_pcm(DEFAULT_TRANSCRIPT, 16000), np.zeros(3200, np.int16)])
    async with running(stt) as (worker, up, down):
        await worker.queue_frame(VADUserStartedSpeakingFrame())
        await play(worker, speech, realtime=0.002)
        await down.wait_for(lambda: down.of(InterimTranscriptionFrame), timeout=5)
        await worker.queue_frame(VADUserStoppedSpeakingFrame())
        await down.wait_for(lambda: down.of(TranscriptionFrame), timeout=5)

    interim = [f.text for f in down.of(InterimTranscriptionFrame)]
    assert interim[0] != DEFAULT_TRANSCRIPT and DEFAULT_TRANSCRIPT.startswith(interim[0])
    assert len(set(interim)) >= 2, "words were not revealed progressively"
    final = down.of(TranscriptionFrame)
    assert [f.text for f in final] == [DEFAULT_TRANSCRIPT]
    assert final[0].finalized
    assert not up.of(ErrorFrame)
    query = fake.requests[0]["query"]
    assert query["model_id"] == "scribe_v2_realtime" and query["audio_format"] == "pcm_16000"
    assert query["commit_strategy"] == "manual"
    assert any(m["message"].get("commit") for m in fake.messages if m["endpoint"] == "stt")


async def test_realtime_stt_server_vad_commit_with_latency(monkeypatch):
    heard = []

    def transcribe(pcm: bytes) -> str:
        heard.append(len(pcm))
        return "hello from the fake"

    async with FakeElevenLabs(stt_final=Latency(0.2, 0.2), transcript=transcribe) as fake:
        monkeypatch.setenv("SSL_CERT_FILE", fake.cert_path)
        stt = ElevenLabsRealtimeSTTService(
            api_key=fake.api_key,
            base_url=fake.stt_host,
            commit_strategy=CommitStrategy.VAD,
            settings=ElevenLabsRealtimeSTTService.Settings(vad_silence_threshold_secs=0.4),
        )
        pcm = np.concatenate(
            [speech_like_pcm("hello from the fake", 16000), np.zeros(16000, np.int16)]
        )
        async with running(stt) as (worker, _up, down):
            await play(worker, pcm)
            await down.wait_for(lambda: down.of(TranscriptionFrame), timeout=5)
        assert [f.text for f in down.of(TranscriptionFrame)] == ["hello from the fake"]
        assert not down.of(TranscriptionFrame)[0].finalized  # server VAD: not finalized
        assert fake.requests[0]["query"]["vad_silence_threshold_secs"] == "0.4"


async def test_realtime_stt_wrong_key_yields_an_error_frame(fake):
    stt = ElevenLabsRealtimeSTTService(api_key="wrong-key", base_url=fake.stt_host)
    async with running(stt) as (_worker, up, _down):
        await up.wait_for(lambda: up.of(ErrorFrame), timeout=10)
    assert "Invalid API key" in up.of(ErrorFrame)[0].error
    assert fake.closed_1008 >= 1


async def test_realtime_stt_rate_limited_then_recovers(fake):
    fake.fail("stt", "429")
    stt = ElevenLabsRealtimeSTTService(api_key=fake.api_key, base_url=fake.stt_host)
    async with running(stt) as (_worker, up, _down):
        await up.wait_for(lambda: up.of(ErrorFrame), timeout=10)
        assert "rate limited" in up.of(ErrorFrame)[0].error
        # pipecat reconnects on its own (after a 4-10 s backoff or at once).
        await up.wait_for(lambda: fake.open_connections == 1, timeout=15)


async def test_no_connections_leak(fake):
    async with running(tts_service(fake)) as (worker, _up, down):
        await worker.queue_frame(TTSSpeakFrame("Hi."))
        await down.wait_for(lambda: down.of(TTSStoppedFrame), timeout=10)
        assert fake.open_connections == 1
    stt = ElevenLabsRealtimeSTTService(api_key=fake.api_key, base_url=fake.stt_host)
    async with running(stt):
        assert fake.open_connections == 1
    await asyncio.sleep(0.2)
    assert fake.open_connections == 0
