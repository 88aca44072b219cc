"""A stock pipecat bot: the pipeline of pipecat's own examples, as they ship.

The shape is pipecat's ``examples/voice/voice-groq.py`` and
``examples/voice/voice-elevenlabs.py`` (github.com/pipecat-ai/pipecat, read at
acead05), written against the installed pipecat 1.14:

    transport.input() -> stt -> user aggregator -> llm -> tts -> transport.output()
                      -> assistant aggregator

with ``LLMContextAggregatorPair(context, user_params=LLMUserAggregatorParams(
vad_analyzer=SileroVADAnalyzer()))``, so pipecat's default user turn
strategies (VAD start, Smart Turn v3 stop with its 3 s fallback), its default
VAD parameters and each TTS service's default sentence aggregation, and
``PipelineWorker(params=PipelineParams(enable_metrics=True,
enable_usage_metrics=True))`` under a ``WorkerRunner``. No speculation, no
first-clause chunking, no output trimming: what Voice Lab changed is left at
pipecat's default. Like every system in the race it gets the same system
prompt and, on the local models, the same reply length and temperature (an
LLM call's parameters, not the pipeline's shape); the examples' greeting at
connection is left out so that every system hears the same turns.

Services, per profile: pipecat's own ``GroqSTTService``, ``GroqLLMService``,
``ElevenLabsTTSService`` (and ``ElevenLabsRealtimeSTTService`` for
cloud-sim-streaming), pointed at the fakes; locally pipecat's
``WhisperSTTService`` (faster-whisper, given the embedded model's path rather
than a name, its default beam-search decoding) and ``PiperTTSService`` (given
the voice package's folder, so nothing is downloaded). pipecat has no
llama.cpp service; its documented way to a local model is an OpenAI-compatible
server (``OLLamaLLMService`` is ``OpenAILLMService`` at Ollama's URL), so the
bot's ``OpenAILLMService`` calls SmolLM2 on a llama.cpp server of its own in this
process (:attr:`pipeline.providers.local.models.LlamaServer.openai_base_url`).

Transport: pipecat ships network transports (Daily, SmallWebRTC, websockets)
that a benchmark could only use with a network client of its own. This is the
minimal transport pair pipecat documents for custom transports
(``BaseInputTransport.push_audio_frame``, ``BaseOutputTransport.write_audio_frame``),
paced as pipecat's websocket output transports pace (``_write_audio_sleep``:
one chunk per chunk's duration, real time) and clearing the listener's queue on an
interruption, as pipecat's clients do when told the bot was interrupted. It is
wrapped as a fastrtc handler, :class:`PipecatBot`, so the benchmark drives it
exactly as it drives Voice Lab and fastrtc's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
from fastrtc import AsyncStreamHandler
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams
from pipecat.workers.runner import WorkerRunner

INPUT_RATE = 16000
OUTPUT_RATE = 24000  # PipelineParams' default output rate


class BenchInputTransport(BaseInputTransport):
    """The microphone's frames into the pipeline, each as it comes."""

    def __init__(self, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self.started = asyncio.Event()

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.started.set()

    async def push_pcm(self, pcm: bytes, sample_rate: int) -> None:
        if self.started.is_set():
            await self.push_audio_frame(
                InputAudioRawFrame(audio=pcm, sample_rate=sample_rate, num_channels=1)
            )


class BenchOutputTransport(BaseOutputTransport):
    """The bot's audio to the listener, on the clock pipecat's websocket transports keep."""

    def __init__(self, params: TransportParams, deliver, clear: Callable[[], None], **kwargs):
        super().__init__(params, **kwargs)
        self._deliver = deliver
        self._clear = clear
        self._send_interval = 0.0
        self._next_send_time = 0.0

    async def setup(self, setup: FrameProcessorSetup):
        await super().setup(setup)
        # As FastAPIWebsocketOutputTransport: a chunk's bytes over the rate, halved
        # (two bytes a sample), is one chunk's duration per chunk.
        self._send_interval = (self.audio_chunk_size / self.sample_rate) / 2

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._clear()
            self._next_send_time = 0.0

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        self._deliver((frame.sample_rate, np.frombuffer(frame.audio, dtype=np.int16)))
        now = time.monotonic()
        wait = max(0.0, self._next_send_time - now)
        await asyncio.sleep(wait)
        if wait == 0:
            self._next_send_time = time.monotonic() + self._send_interval
        else:
            self._next_send_time += self._send_interval
        return True


class BenchTransport(BaseTransport):
    def __init__(self, deliver, clear: Callable[[], None]):
        super().__init__()
        params = TransportParams(audio_in_enabled=True, audio_out_enabled=True)
        self._input = BenchInputTransport(params, name="bench-in")
        self._output = BenchOutputTransport(params, deliver, clear, name="bench-out")

    def input(self) -> BenchInputTransport:
        return self._input

    def output(self) -> BenchOutputTransport:
        return self._output


def stock_worker(transport: BaseTransport, stt, llm, tts) -> PipelineWorker:
    """The examples' pipeline and worker around ``stt``, ``llm`` and ``tts``."""
    context = LLMContext()
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            user_aggregator,
            llm,
            tts,
            transport.output(),
            assistant_aggregator,
        ]
    )
    return PipelineWorker(
        pipeline,
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
    )


class PipecatBot(AsyncStreamHandler):
    """The stock bot as a fastrtc handler: ``receive`` feeds its input, ``emit`` its output.

    ``services`` makes the (stt, llm, tts) triple when the connection starts.
    """

    def __init__(self, services: Callable[[], tuple]):
        super().__init__(
            expected_layout="mono", output_sample_rate=OUTPUT_RATE, input_sample_rate=INPUT_RATE
        )
        self._services = services
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._transport: BenchTransport | None = None
        self._worker: PipelineWorker | None = None

    def copy(self) -> PipecatBot:
        return PipecatBot(self._services)

    @property
    def started(self) -> bool:
        return self._transport is not None and self._transport.input().started.is_set()

    def _clear_listener(self) -> None:
        while not self._outbox.empty():
            self._outbox.get_nowait()
        if self.clear_queue is not None:
            self.clear_queue()

    async def start_up(self) -> None:
        self._transport = BenchTransport(self._outbox.put_nowait, self._clear_listener)
        self._worker = stock_worker(self._transport, *self._services())
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self._worker)
        await runner.run()

    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        if self._transport is not None:
            rate, samples = frame
            pcm = np.ascontiguousarray(samples.reshape(-1), dtype=np.int16).tobytes()
            await self._transport.input().push_pcm(pcm, rate)

    async def emit(self):
        return await self._outbox.get()

    async def shutdown(self) -> None:
        if self._worker is not None:
            await self._worker.cancel()
