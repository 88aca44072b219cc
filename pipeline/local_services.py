"""Pipecat services backed by the embedded models in :mod:`pipeline.models`.

pipecat ships a faster-whisper and a Piper service, but each loads its own copy
of the model per instance (one per session here) and the Whisper one decodes
with beam search and timestamps, which costs ~2x the greedy settings we use.
These thin subclasses reuse the process-wide models instead. There is no
llama.cpp service in pipecat, so :class:`LocalLlamaLLMService` is ours.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator

from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TranscriptionFrame,
)
from pipecat.metrics.metrics import LLMTokenUsage
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings, STTSettings, TTSSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.time import time_now_iso8601

from pipeline.models import LLM_LABEL, PIPER_LABEL, WHISPER_LABEL, LocalModels

# Keep the prompt well inside the 2048-token window of the local model (about
# four characters a token). When the history outgrows the budget the oldest half
# is dropped in one go, not one message per turn: llama.cpp reuses the evaluated
# prompt prefix, and a window sliding every turn would re-evaluate it all.
HISTORY_BUDGET_CHARS = 4000


class LocalWhisperSTTService(SegmentedSTTService):
    """Whisper tiny.en, greedy decoding, on the shared model.

    Whisper is segmented (it transcribes a finished utterance), so interim
    text is made by re-transcribing the growing utterance every
    ``interim_every_secs`` of new speech on a second model instance; a pass
    is skipped when the machine is busy, and a pass still running when the
    utterance ends is dropped.
    """

    def __init__(self, *, models: LocalModels, interim_every_secs: float = 0.6, **kwargs):
        super().__init__(
            settings=STTSettings(model=WHISPER_LABEL, language=Language.EN),
            trailing_silence_secs=0.3,
            ttfs_p99_latency=0.6,
            **kwargs,
        )
        self._models = models
        self._interim_every_secs = interim_every_secs
        self._interim_from = 0
        self._interim_task: asyncio.Task | None = None

    @property
    def wants_wav_segments(self) -> bool:
        """The model reads raw 16-bit PCM."""
        return False

    def can_generate_metrics(self) -> bool:
        return True

    async def _handle_user_started_speaking(self, frame):
        await super()._handle_user_started_speaking(frame)
        self._interim_from = len(self._audio_buffer)

    async def _handle_user_stopped_speaking(self, frame):
        await self._cancel_interim()
        await super()._handle_user_stopped_speaking(frame)

    async def process_audio_frame(self, frame, direction):
        await super().process_audio_frame(frame, direction)
        if not self._user_speaking or self._interim_every_secs <= 0:
            return
        new_secs = (len(self._audio_buffer) - self._interim_from) / (2 * self.sample_rate)
        if new_secs >= self._interim_every_secs and (
            self._interim_task is None or self._interim_task.done()
        ):
            self._interim_from = len(self._audio_buffer)
            snapshot = bytes(self._audio_buffer)
            self._interim_task = self.create_task(self._push_interim(snapshot), name="interim")

    async def _push_interim(self, audio: bytes) -> None:
        text = await asyncio.to_thread(self._models.transcribe_interim, audio, self.sample_rate)
        if text and self._user_speaking:
            await self.push_frame(
                InterimTranscriptionFrame(text, self._user_id, time_now_iso8601(), Language.EN)
            )

    async def _cancel_interim(self) -> None:
        if self._interim_task is not None:
            await self.cancel_task(self._interim_task)
            self._interim_task = None

    async def cancel(self, frame):
        await self._cancel_interim()
        await super().cancel(frame)

    async def stop(self, frame):
        await self._cancel_interim()
        await super().stop(frame)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        await self.start_processing_metrics()
        text = await asyncio.to_thread(self._models.transcribe, audio, self.sample_rate)
        await self.stop_processing_metrics()
        if text:
            yield TranscriptionFrame(text, self._user_id, time_now_iso8601(), Language.EN)


class LocalLlamaLLMService(LLMService):
    """SmolLM2-135M-Instruct on llama.cpp (xllamacpp), streamed token by token.

    Generation runs in a worker thread that hands each token to the event loop;
    an interruption cancels the awaiting task, and the ``stop`` event it sets on
    the way out ends the thread's loop at the next token, so a barged-in reply
    stops using the CPU at once.
    """

    def __init__(
        self,
        *,
        models: LocalModels,
        system_instruction: str,
        max_tokens: int = 80,
        temperature: float = 0.3,
        **kwargs,
    ):
        settings = LLMSettings(
            model=LLM_LABEL,
            system_instruction=system_instruction,
            temperature=temperature,
            max_tokens=max_tokens,
            top_p=None,
            top_k=None,
            frequency_penalty=None,
            presence_penalty=None,
            seed=None,
            filter_incomplete_user_turns=False,
            user_turn_completion_config=None,
            extra={},
        )
        super().__init__(settings=settings, **kwargs)
        self._models = models
        self._history_start = 0

    def can_generate_metrics(self) -> bool:
        return True

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        await self.push_frame(LLMFullResponseStartFrame())
        await self.start_processing_metrics()
        try:
            await self._generate(frame.context)
        except Exception as e:
            await self.push_error(error_msg=f"Local LLM failed: {e}", exception=e)
        finally:
            await self.stop_processing_metrics()
            await self.push_frame(LLMFullResponseEndFrame())

    async def _messages(self, context: LLMContext) -> list[dict]:
        params = await self.get_llm_adapter().get_llm_invocation_params(
            context,
            system_instruction=self._settings.system_instruction,
            convert_developer_to_user=True,
        )
        messages = list(params["messages"])
        system = [m for m in messages[:1] if m.get("role") == "system"]
        history = [m for m in messages[len(system) :] if isinstance(m.get("content"), str)]
        return system + self._trim(history)

    def _trim(self, history: list[dict]) -> list[dict]:
        def size(start: int) -> int:
            return sum(len(m["content"]) for m in history[start:])

        if self._history_start >= len(history):
            self._history_start = 0
        if size(self._history_start) > HISTORY_BUDGET_CHARS:
            last = len(history) - 1  # the newest message always stays
            while (
                self._history_start < last and size(self._history_start) > HISTORY_BUDGET_CHARS // 2
            ):
                self._history_start += 1
            # Start on a user message, as chat templates expect.
            while (
                self._history_start < len(history) - 1
                and history[self._history_start]["role"] != "user"
            ):
                self._history_start += 1
        return history[self._history_start :]

    async def _generate(self, context: LLMContext) -> None:
        messages = await self._messages(context)
        await self.start_ttfb_metrics()
        usage: dict = {}
        async for token in self._stream_tokens(messages, usage):
            await self.stop_ttfb_metrics()
            await self._push_llm_text(token)
        if usage:
            await self.start_llm_usage_metrics(
                LLMTokenUsage(
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    total_tokens=usage["prompt_tokens"] + usage["completion_tokens"],
                )
            )

    async def _stream_tokens(self, messages: list[dict], usage: dict) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        stop = threading.Event()
        models = self._models
        max_tokens = int(self._settings.max_tokens)
        temperature = float(self._settings.temperature or 0.0)

        def generate() -> None:
            count = 0

            def on_text(text: str) -> bool:
                nonlocal count
                count += 1
                loop.call_soon_threadsafe(tokens.put_nowait, text)
                return stop.is_set()

            try:
                with models.llm_lock:
                    reported = models.llm.chat(
                        messages, max_tokens=max_tokens, temperature=temperature, on_text=on_text
                    )
                usage.update(
                    prompt_tokens=int(reported.get("prompt_tokens", 0)),
                    completion_tokens=int(reported.get("completion_tokens", count)),
                )
                loop.call_soon_threadsafe(tokens.put_nowait, None)
            except BaseException as e:  # surfaced on the event loop, not lost in the thread
                loop.call_soon_threadsafe(tokens.put_nowait, e)

        worker = loop.run_in_executor(None, generate)
        try:
            while (item := await tokens.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            if not worker.done():
                # Let the thread see ``stop`` and release the model lock in the
                # background; an interruption must not wait for it.
                worker.add_done_callback(_log_failure)


def _log_failure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning(f"abandoned local LLM generation failed: {future.exception()}")


class LocalPiperTTSService(TTSService):
    """Piper en_US-joe-medium on the shared voice, one synthesis per sentence."""

    def __init__(self, *, models: LocalModels, **kwargs):
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=PIPER_LABEL, voice="en_US-joe-medium", language=None),
            **kwargs,
        )
        self._models = models

    def can_generate_metrics(self) -> bool:
        return True

    def _synthesize(self, text: str) -> list[bytes]:
        with self._models.tts_lock:
            return [chunk.audio_int16_bytes for chunk in self._models.piper.synthesize(text)]

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        await self.start_tts_usage_metrics(text)
        try:
            chunks = await asyncio.to_thread(self._synthesize, text)
        except Exception as e:
            logger.error(f"{self} synthesis failed: {e}")
            yield ErrorFrame(error=f"Local speech synthesis failed: {e}")
            return

        async def audio() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        sample_rate = self._models.piper.config.sample_rate
        async for frame in self._stream_audio_frames_from_iterator(
            audio(), in_sample_rate=sample_rate, context_id=context_id
        ):
            await self.stop_ttfb_metrics()
            yield frame
