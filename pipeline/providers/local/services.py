"""Pipecat services backed by the embedded models in :mod:`pipeline.providers.local.models`.

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
from typing import cast

import numpy as np
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
from pipecat.utils.tracing.service_decorators import traced_llm, traced_stt, traced_tts
from pipecat.utils.types import assert_given

from pipeline.compat.pipecat import push_llm_text, stream_tts_audio
from pipeline.providers.local.models import PIPER_LABEL, WHISPER_LABEL, LocalModels
from pipeline.speculation import (
    EagerSegment,
    EagerSegmentsMixin,
    UserPausedFrame,
    UserResumedFrame,
)
from pipeline.weights import EMBEDDED_LABEL

# Keep the prompt well inside the 2048-token window of the local model (about
# four characters a token). When the history outgrows the budget the oldest half
# is dropped in one go, not one message per turn: llama.cpp reuses the evaluated
# prompt prefix, and a window sliding every turn would re-evaluate it all.
HISTORY_BUDGET_CHARS = 4000

# An interim pass whose audio ended at most this long before a pause heard the
# whole utterance: its text answers the pause without another Whisper pass.
INTERIM_COVERS_SECS = 0.1


class _Block:
    """A closed block of the utterance in progress: its interim text, then its final text."""

    __slots__ = ("final", "interim", "utterance")

    def __init__(self, interim: str, utterance: int):
        self.interim = interim
        self.final: str | None = None
        self.utterance = utterance

    @property
    def text(self) -> str:
        return self.interim if self.final is None else self.final


class _BlockAudio(bytes):
    """A closed block's audio, queued for its final transcript ahead of the utterance's end."""

    block: _Block


class _DropBlocks(bytes):
    """Queued when an utterance ends without a segment: forget its blocks' final texts."""


def quiet_point(pcm16: bytes, sample_rate: int) -> int:
    """Sample offset of the middle of the quietest 100 ms in ``pcm16`` (16-bit mono)."""
    frame = sample_rate // 50  # 20 ms
    samples = np.frombuffer(pcm16, dtype=np.int16)
    frames = samples[: len(samples) // frame * frame].astype(np.float32).reshape(-1, frame)
    if len(frames) < 5:
        return len(samples) // 2
    energy = np.convolve((frames**2).mean(axis=1), np.ones(5), mode="valid")
    # The latest of equally quiet windows: keep as much as possible in this block.
    best = len(energy) - 1 - int(np.argmin(energy[::-1]))
    return (best + 2) * frame + frame // 2


class LocalWhisperSTTService(EagerSegmentsMixin, SegmentedSTTService):
    """Whisper tiny.en, greedy decoding, on the shared model.

    Whisper is segmented (it transcribes a finished utterance), so interim
    text is made by re-transcribing the utterance so far on other model
    instances: first once ``first_interim_secs`` of speech are in, at normal
    priority (``LocalModels.first_words_whisper``: a pass takes ~0.45 s of
    CPU, so a later or lower-priority first pass would end after a short
    question on a busy machine), then every ``interim_every_secs`` of new
    speech at the lowest priority. While a model is busy (a final
    transcript, another session's pass) no pass starts and the next frame
    tries again; none starts once the user pauses (the transcript of the
    pause needs the CPU), and a pass still running when the utterance ends
    is dropped.

    A long utterance is held in blocks of at most ``block_secs``, each cut at
    the quietest 100 ms of its last third: a closed block goes to the final
    model at once (in order with the segments pipecat queues) and its audio is
    let go. Interim passes read only the open block, and the interim text is
    the closed blocks' text (their final text once it is in) followed by the
    open block's; at the end of a monologue only the last block is left to
    transcribe. Whisper pads its input to 30-second windows, so a pass over a
    block costs the same memory however long the utterance: re-transcribing a
    whole minute took two windows a pass and twice the working memory (~110
    MB), and one minute could run back to back on both models.
    """

    def __init__(
        self,
        *,
        models: LocalModels,
        interim_every_secs: float = 0.6,
        first_interim_secs: float = 0.3,
        block_secs: float = 15.0,
        **kwargs,
    ):
        super().__init__(
            settings=STTSettings(model=WHISPER_LABEL, language=Language.EN),
            trailing_silence_secs=0.3,
            ttfs_p99_latency=0.6,
            **kwargs,
        )
        self._models = models
        self._interim_every_secs = interim_every_secs
        self._first_interim_secs = first_interim_secs
        self._block_secs = block_secs
        # Where in the buffer the latest interim pass started, and whether the
        # open block has had one (its first is due sooner).
        self._interim_from = 0
        self._interim_ran = False
        self._interim_task: asyncio.Task | None = None
        # The user paused (speculative turns report it before the VAD stop).
        self._paused = False
        # The utterance in progress: its closed blocks, the open block's
        # latest interim text, and a counter that outdates interim passes
        # over audio that has since moved into a closed block.
        self._utterance = 0
        self._blocks: list[_Block] = []
        self._open_text = ""
        # Bytes of the open block the latest interim text was transcribed from.
        self._open_covers = 0
        self._open_block = 0
        self._shown = ""
        # Final texts of closed blocks, in queue order, awaiting the utterance's last segment.
        self._final_blocks: list[str] = []

    @property
    def wants_wav_segments(self) -> bool:
        """The model reads raw 16-bit PCM."""
        return False

    def can_generate_metrics(self) -> bool:
        return True

    async def on_user_started_speaking(self, frame):
        await super().on_user_started_speaking(frame)
        self._utterance += 1
        self._open_block += 1
        self._blocks = []
        self._open_text = ""
        self._shown = ""
        self._interim_from = len(self.audio_buffer)
        self._interim_ran = False
        self._paused = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, UserPausedFrame | UserResumedFrame):
            self._paused = isinstance(frame, UserPausedFrame)
        await super().process_frame(frame, direction)

    async def on_user_stopped_speaking(self, frame):
        await self._cancel_interim()
        if self._blocks and not self.is_usable:
            # pipecat drops the segment: the blocks queued before it must not
            # prefix the next utterance's transcript.
            self.segment_queue.put_nowait(_DropBlocks(b"\0"))
        self._blocks = []
        await super().on_user_stopped_speaking(frame)

    async def process_audio_frame(self, frame, direction):
        await super().process_audio_frame(frame, direction)
        if not self.user_speaking:
            return
        if (
            self._block_secs > 0
            and len(self.audio_buffer) >= self._block_secs * 2 * self.sample_rate
        ):
            self._close_block()
        if self._interim_every_secs <= 0 or (
            self._interim_task is not None and not self._interim_task.done()
        ):
            return
        first = not self._interim_ran
        due = self._first_interim_secs if first else self._interim_every_secs
        new_secs = (len(self.audio_buffer) - self._interim_from) / (2 * self.sample_rate)
        if new_secs >= due and not self._paused and self._models.interim_idle(first):
            started_from, self._interim_from = self._interim_from, len(self.audio_buffer)
            self._interim_ran = True
            snapshot = bytes(self.audio_buffer)
            self._interim_task = self.create_task(
                self._push_interim(snapshot, self._open_block, started_from, first),
                name="interim",
            )

    def _close_block(self) -> None:
        """Cut the open block at its quietest moment and queue it for its final transcript."""
        search_from = int(self._block_secs * 2 / 3 * self.sample_rate) * 2
        # Stop short of the newest audio (the VAD ends an utterance 0.2 s into
        # a pause), so what follows the cut always holds speech.
        search_to = max(search_from + 2, len(self.audio_buffer) - self.sample_rate)
        window = bytes(self.audio_buffer[search_from:search_to])
        cut = search_from + 2 * quiet_point(window, self.sample_rate)
        with memoryview(self.audio_buffer) as view:
            audio = _BlockAudio(view[:cut])
        del self.audio_buffer[:cut]
        self._interim_from = max(0, self._interim_from - cut)
        audio.block = _Block(self._open_text, self._utterance)
        self._blocks.append(audio.block)
        self._open_text = ""
        self._open_block += 1
        self._interim_ran = False
        self.record_audio_usage(audio)
        self.segment_queue.put_nowait(audio)

    async def _push_interim(self, audio: bytes, block: int, started_from: int, first: bool):
        text = await asyncio.to_thread(
            self._models.transcribe_interim, audio, self.sample_rate, first
        )
        if text is None and block == self._open_block:
            # Whisper was taken between the check and the pass: due again at once.
            self._interim_from, self._interim_ran = started_from, not first
            return
        if text is not None and block == self._open_block and self.user_speaking:
            self._open_text = text
            self._open_covers = len(audio)
            await self._show_interim()

    async def _show_interim(self) -> None:
        text = " ".join(t for t in [*(b.text for b in self._blocks), self._open_text] if t)
        if text and text != self._shown:
            self._shown = text
            await self.push_frame(
                InterimTranscriptionFrame(text, self.user_id, time_now_iso8601(), Language.EN)
            )

    async def _cancel_interim(self) -> None:
        if self._interim_task is not None:
            await self.cancel_task(self._interim_task)
            self._interim_task = None

    async def cancel(self, frame):
        await self._cancel_interim()
        await super().cancel(frame)
        self._final_blocks.clear()

    async def stop(self, frame):
        await self._cancel_interim()
        await super().stop(frame)

    async def eager_transcript(self, audio: bytes) -> str:
        """The open block's words at a pause: the latest interim text if it heard them all."""
        uncovered = len(self.audio_buffer) - self._open_covers
        if self._open_text and uncovered <= INTERIM_COVERS_SECS * 2 * self.sample_rate:
            return self._open_text
        return await asyncio.to_thread(self._models.transcribe, audio, self.sample_rate)

    def eager_frame_text(self, text: str) -> str:
        return " ".join(t for t in [*(b.text for b in self._blocks), text] if t)

    @traced_stt  # an "stt" span per transcript when the session is traced (pipecat's)
    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame, None]:
        if isinstance(audio, _DropBlocks):
            self._final_blocks.clear()
            return
        if isinstance(audio, _BlockAudio):
            # A block of an utterance still in progress: its text waits for the rest.
            block_text = await asyncio.to_thread(self._models.transcribe, audio, self.sample_rate)
            self._final_blocks.append(block_text)
            audio.block.final = block_text
            if audio.block.utterance == self._utterance and self.user_speaking:
                await self._show_interim()
            return
        await self.start_processing_metrics()
        if isinstance(audio, EagerSegment):  # transcribed when the user paused
            text = await self.committed_text(audio)
            if isinstance(text, ErrorFrame):
                await self.stop_processing_metrics()
                yield text
                return
        else:
            text = await asyncio.to_thread(self._models.transcribe, audio, self.sample_rate)
        await self.stop_processing_metrics()
        text = " ".join(t for t in [*self._final_blocks, text] if t)
        self._final_blocks.clear()
        if text:
            yield TranscriptionFrame(text, self.user_id, time_now_iso8601(), Language.EN)


class LocalLlamaLLMService(LLMService):
    """The local GGUF (SmolLM2-135M-Instruct unless the hub gave another) on llama.cpp.

    Streamed token by token; ``label`` names the model in metrics and on the page.

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
        label: str = EMBEDDED_LABEL,
        **kwargs,
    ):
        settings = LLMSettings(
            model=label,
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

    @property
    def _llm_settings(self) -> LLMSettings:
        """pipecat's ``settings``, typed as the base class's; an LLM's are ``LLMSettings``."""
        return cast(LLMSettings, self.settings)

    async def _messages(self, context: LLMContext) -> list[dict]:
        params = await self.get_llm_adapter().get_llm_invocation_params(
            context,
            system_instruction=self._llm_settings.system_instruction,
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

    @traced_llm  # an "llm" span per reply when the session is traced (pipecat's)
    async def _generate(self, context: LLMContext) -> None:
        messages = await self._messages(context)
        await self.start_ttfb_metrics()
        usage: dict = {}
        async for token in self._stream_tokens(messages, usage):
            await self.stop_ttfb_metrics()
            await push_llm_text(self, token)
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
        given_max_tokens = assert_given(self._llm_settings.max_tokens)
        if given_max_tokens is None:
            raise ValueError("the local LLM needs a max_tokens setting")
        max_tokens = int(given_max_tokens)
        temperature = float(self._llm_settings.temperature or 0.0)

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

    @traced_tts  # a "tts" span per reply's audio when the session is traced (pipecat's)
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
        async for frame in stream_tts_audio(
            self, audio(), in_sample_rate=sample_rate, context_id=context_id
        ):
            await self.stop_ttfb_metrics()
            yield frame
