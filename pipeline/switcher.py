"""Provider and knob changes take effect between turns, on a new pipeline generation.

A session runs one pipeline *generation* at a time. A change asked for from
the page waits for the gap between turns (:class:`TurnActivity`); the next
generation is then built off the event loop with the new settings and the same
conversation context, started, and the old one cancelled, while the WebRTC
connection stays up. Microphone audio arriving during the hand-over is held
and replayed into the new generation, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.workers.runner import WorkerRunner

from pipeline import events as ev
from pipeline.config import SessionConfig
from pipeline.providers.base import Stage
from pipeline.providers.registry import PROVIDERS

log = logging.getLogger(__name__)

# A switch waits for the gap between turns to have lasted this long.
SWITCH_IDLE_SECS = 0.3
# Audio held while one generation hands over to the next (at 20 ms a frame).
HANDOVER_FRAMES = 150


class TurnActivity(BaseObserver):
    """Whether a turn is under way, so a provider switch waits for the gap between turns.

    A turn runs from the user starting to speak until the bot has finished its
    reply. Between the user stopping and the bot starting (transcription, the
    LLM, the first synthesis) nothing is audible, so that stretch is covered
    by a deadline that each sign of progress extends; if a provider fails and
    the reply never comes, the deadline runs out and the session is idle again.
    """

    REPLY_GRACE_SECS = 4.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._now = clock
        self.user_speaking = False
        self.bot_speaking = False
        self._reply_due_until = 0.0

    @property
    def idle(self) -> bool:
        return (
            not self.user_speaking
            and not self.bot_speaking
            and self._now() >= self._reply_due_until
        )

    async def on_push_frame(self, data: FramePushed):
        frame = data.frame
        match frame:
            case UserStartedSpeakingFrame():
                self.user_speaking = True
            case UserStoppedSpeakingFrame():
                self.user_speaking = False
                self._expect_reply()
            case TranscriptionFrame() | LLMFullResponseStartFrame() | LLMTextFrame():
                self._expect_reply()
            case BotStartedSpeakingFrame():
                self.bot_speaking = True
            case BotStoppedSpeakingFrame() | ErrorFrame():
                # The reply is over, or failed and will not come.
                self.bot_speaking = self.bot_speaking and isinstance(frame, ErrorFrame)
                self._reply_due_until = 0.0

    def _expect_reply(self) -> None:
        self._reply_due_until = self._now() + self.REPLY_GRACE_SECS


class Generation(Protocol):
    """What the switcher uses of a generation (``pipeline.builder.PipelineGeneration``)."""

    worker: Any  # a pipecat PipelineWorker
    transport: Any  # its input() takes the microphone's PCM
    context: LLMContext
    activity: TurnActivity
    config: SessionConfig


# (config, the conversation so far or None) -> a generation built and not yet started.
Build = Callable[[SessionConfig, LLMContext | None], Generation]


def _no_key_message(config: SessionConfig, stages: list[Stage]) -> str:
    names = sorted({PROVIDERS[config.choices()[stage].provider].label for stage in stages})
    return (
        f"No API key for {' and '.join(names)}: using the local models for "
        f"{', '.join(s.upper() for s in stages)} until you type one in."
    )


class GenerationSwitcher:
    """Runs a session's pipeline generations one after another, switching between turns.

    ``build`` runs on a worker thread: the per-session Silero and Smart Turn
    ONNX sessions take ~70 ms to create, longer than the output's jitter
    cushion, and every other session's audio runs on the event loop. ``report``
    must not hold the session (see ``VoiceSession``); the pipeline holds this
    switcher only through a weak reference, for the same reason.
    """

    def __init__(
        self,
        config: SessionConfig,
        build: Build,
        report: Callable[[ev.Event], None],
        *,
        idle_secs: float = SWITCH_IDLE_SECS,
        runner: Callable[[], WorkerRunner] = lambda: WorkerRunner(handle_sigint=False),
        session_id: str = "",
    ):
        self.config = config
        self._session_id = session_id
        self._build = build
        self._report = report
        self._idle_secs = idle_secs
        self._new_runner = runner
        self.generation: Generation | None = None
        self.stopping = False
        self._runner: WorkerRunner | None = None
        self._next: Generation | None = None
        # Set from the page's requests, applied between turns by the switch loop.
        self._requested: SessionConfig | None = None
        self._switch_requested = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._handover: deque[tuple[int, np.ndarray]] | None = None
        self._handover_task: asyncio.Task | None = None
        self._notice: str | None = None

    def running_config(self) -> SessionConfig | None:
        """The settings of the generation that runs now (None before the first one)."""
        return self.config if self.generation is not None else None

    def request(self, config: SessionConfig) -> None:
        """Use ``config`` from the next turn on (before the first generation: from the start)."""
        if self.generation is None and self._next is None:
            self.config = config
            return
        self._requested = config
        self._switch_requested.set()

    async def run(self) -> None:
        """Build the first generation and run generations until the session stops."""
        if missing := self.config.keyless_stages():
            # Picked before pressing Record, without a key: start on the
            # local models for those stages rather than not at all.
            self._notice = _no_key_message(self.config, missing)
            self.config = self.config.with_local_fallback()
        generation: Generation | None
        generation = await asyncio.to_thread(self._build, self.config, None)
        if generation.config is not self.config:  # the page changed a setting meanwhile
            self._requested = self.config
            self._switch_requested.set()
        while generation is not None and not self.stopping:
            await self._run_generation(generation)
            generation, self._next = self._next, None

    async def push(self, sample_rate: int, pcm: np.ndarray) -> None:
        """Microphone audio into the running generation, or held while generations hand over."""
        if self._handover is not None:
            self._handover.append((sample_rate, pcm))
            return
        if self.generation is None:  # not started yet, or released: nothing to hear it
            return
        await self.generation.transport.input().push_pcm(pcm.tobytes(), sample_rate)

    async def stop(self, reason: str) -> None:
        """No further generation; the running one is cancelled."""
        self.stopping = True
        if self._runner is not None:
            await self._runner.cancel(reason=reason)

    def start(self) -> None:
        """Start applying requested changes between turns."""
        self._task = asyncio.create_task(self._switch_loop(), name="voice-lab-switcher")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def drop_references(self) -> None:
        """Let go of generations and tasks, so that nothing here outlives a closed session."""
        self.generation = self._next = None
        self._runner = self._task = self._handover_task = None

    async def _run_generation(self, generation: Generation) -> None:
        """Run one generation until it ends (switch, disconnect, idle timeout)."""
        first = self.generation is None
        self.generation = generation
        self.config = generation.config
        switcher = weakref.ref(self)  # the pipeline must not hold the session's parts

        @generation.worker.event_handler("on_pipeline_started")
        async def _on_started(_worker, _frame):
            if (self_ := switcher()) is not None:
                self_._generation_started(generation, first)

        self._runner = self._new_runner()
        await self._runner.add_workers(generation.worker)
        # ``run()`` clears a cancel issued before it starts: check ourselves.
        if not self.stopping:
            await self._runner.run()

    def _generation_started(self, generation: Generation, first: bool) -> None:
        if first:
            self._report(ev.SessionStarted(time.time(), self._session_id))
        self._report(ev.ProvidersChanged(time.time(), *generation.config.labels()))
        if self._notice:
            # After SessionStarted, which clears the page's error line.
            self._report(ev.ErrorReported(time.time(), self._notice))
            self._notice = None
        if self._handover is not None:
            self._handover_task = asyncio.create_task(
                self._drain_handover(generation), name="voice-lab-handover"
            )

    async def _switch_loop(self) -> None:
        while True:
            await self._switch_requested.wait()
            await self._wait_until_between_turns()
            self._switch_requested.clear()
            config, self._requested = self._requested, None
            if config is None or self.generation is None or self.stopping:
                continue
            await self._switch_to(config)

    async def _wait_until_between_turns(self) -> None:
        idle_since: float | None = None
        while True:
            generation = self.generation
            handing_over = self._next is not None or self._handover is not None
            if generation is not None and generation.activity.idle and not handing_over:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= self._idle_secs:
                    return
            else:
                idle_since = None
            await asyncio.sleep(0.05)

    async def _switch_to(self, config: SessionConfig) -> None:
        old = self.generation
        assert old is not None
        try:
            new = await asyncio.to_thread(self._build, config, old.context)
        except Exception as e:
            log.warning("could not switch providers: %s", config.keys.redact(str(e)))
            self._report(ev.ErrorReported(time.time(), config.keys.redact(str(e))))
            return
        if self.stopping:
            return
        log.info("switching to %s", " / ".join(config.labels()))
        self._handover = deque(maxlen=HANDOVER_FRAMES)
        self._next = new
        if self._runner is not None:
            await self._runner.cancel(reason="switching providers")

    async def _drain_handover(self, generation: Generation) -> None:
        """Feed the held audio to the new generation, in order, then let frames through."""
        held = self._handover
        while held:
            sample_rate, pcm = held.popleft()
            await generation.transport.input().push_pcm(pcm.tobytes(), sample_rate)
        # No await between the last check and this: no frame can slip past.
        self._handover = None
