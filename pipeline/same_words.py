"""Same words, other stack: the user's last utterance, replayed headless through a second stack.

The session keeps the audio of the user's last turn (:class:`UtteranceRecorder`,
bounded in seconds and bytes, dropped when the session ends). On request that
audio is fed, in real time, into a second pipeline generation built by
:func:`pipeline.builder.build_generation` with other providers and the same
knobs, whose output goes nowhere (:class:`_DiscardingOutbox`). Its events are
the same :mod:`pipeline.events` the live session reports, so the UI folds them
with the same reducer and compares the two turns figure by figure.

The run never touches the live call: it has its own event loop on its own
thread (:func:`run_apart`), its own copy of the conversation as it stood
before the utterance, and the session's keys go nowhere but its own services.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.workers.runner import WorkerRunner

from pipeline import events as ev
from pipeline.builder import build_generation
from pipeline.config import SessionConfig
from pipeline.providers.base import ProviderKeys, Stage, StageChoice
from pipeline.providers.local.models import LocalModels, LocalStageUnavailable
from pipeline.providers.registry import PROVIDERS
from pipeline.transport import SessionOutbox

if TYPE_CHECKING:
    from pipeline.server_keys import ServerKeyBudget
    from pipeline.switcher import Generation

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = TypeVar("Outcome")

# Audio kept from before the VAD's start: Silero reports speech ~0.2 s after it began.
PREROLL_SECS = 1.0
# The longest utterance kept; a longer one is remembered only as "too long".
MAX_UTTERANCE_SECS = 30.0
# ...and at most this much of it, whatever the sample rate (30 s of 16 kHz is 0.96 MB).
MAX_UTTERANCE_BYTES = 1_000_000
FRAME_SECS = 0.02
# The whole run, building included, is abandoned after this: up to 30 s of speech,
# then a reply whose words a word-timed TTS (ElevenLabs) releases in real time.
AB_TIMEOUT_SECS = 90.0
# Silence fed after the utterance before concluding the other stack heard no words.
NO_WORDS_SECS = 8.0
# pipecat reports a segmented STT's time to first byte 2 s after the VAD stop
# (``stt_ttfb_timeout``); a reply done sooner waits this long more for it.
STT_TTFB_GRACE_SECS = 2.5
# Output lead with no pacing: nobody listens to the other stack's reply, so its
# audio is accounted for as fast as it is made and the turn ends when synthesis does.
# The first audio (what voice-to-voice measures) is never held back by pacing.
UNPACED_LEAD_SECS = 3600.0


class LiveCall(Protocol):
    """What a run reads of the live call (a :class:`pipeline.session.VoiceSession`)."""

    finished: asyncio.Event
    utterance: UtteranceRecorder
    comparing: bool
    key_budget: ServerKeyBudget

    @property
    def config(self) -> SessionConfig: ...

    @property
    def generation(self) -> Generation | None: ...


# How long a run waits for the live call to be between turns, and how often it looks.
BETWEEN_TURNS_WAIT_SECS = 30.0
BETWEEN_TURNS_POLL_SECS = 0.05


@dataclass(frozen=True)
class Utterance:
    """The audio of one user turn as the session received it (16-bit mono PCM)."""

    pcm: bytes
    sample_rate: int
    # Which user turn it became, counted as the UI's reducer counts them (1-based).
    turn: int
    # Longer than MAX_UTTERANCE_SECS: its audio was not kept.
    too_long: bool = False

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


class UtteranceRecorder:
    """The audio of the user's last turn, from shortly before the VAD start to the turn's end.

    Fed every frame the session receives and every event it reports. Holds
    at most the pre-roll, the turn being spoken and the last complete one,
    each bounded, so a minute-long monologue costs no more than 30 seconds.
    """

    def __init__(
        self,
        preroll_secs: float = PREROLL_SECS,
        max_secs: float = MAX_UTTERANCE_SECS,
        max_bytes: int = MAX_UTTERANCE_BYTES,
    ):
        self._preroll_secs = preroll_secs
        self._max_secs = max_secs
        self._max_bytes = max_bytes
        self._sample_rate = 0
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._recording: list[bytes] | None = None
        self._recorded_bytes = 0
        self._too_long = False
        self._turn = 0
        self._turns_seen = 0
        self.last: Utterance | None = None

    @property
    def held_bytes(self) -> int:
        """Audio held now: pre-roll, the turn in progress, the last turn."""
        last = len(self.last.pcm) if self.last is not None else 0
        return self._preroll_bytes + self._recorded_bytes + last

    def add(self, sample_rate: int, samples: np.ndarray) -> None:
        """One received frame (int16 mono)."""
        if sample_rate != self._sample_rate:
            if self._sample_rate:  # audio at two rates cannot be one utterance
                self._preroll.clear()
                self._preroll_bytes = 0
                self._recording = None
                self._recorded_bytes = 0
            self._sample_rate = sample_rate
        pcm = samples.astype(np.int16, copy=False).tobytes()
        if self._recording is not None:
            self._record(pcm)
            return
        self._preroll.append(pcm)
        self._preroll_bytes += len(pcm)
        limit = self._preroll_secs * sample_rate * 2
        while self._preroll and self._preroll_bytes - len(self._preroll[0]) >= limit:
            self._preroll_bytes -= len(self._preroll.popleft())

    def _record(self, pcm: bytes) -> None:
        if self._too_long or self._recording is None:
            return
        limit = min(self._max_bytes, self._max_secs * self._sample_rate * 2)
        if self._recorded_bytes + len(pcm) > limit:
            # Over the cap: let the audio go rather than compare half an utterance.
            self._too_long = True
            self._recording = []
            self._recorded_bytes = 0
            return
        self._recording.append(pcm)
        self._recorded_bytes += len(pcm)

    def observe(self, event: ev.Event) -> None:
        """The session's events: where a user turn starts, ends, and which turn it is."""
        match event:
            case ev.UserStartedSpeaking():
                self._recording = list(self._preroll)
                self._recorded_bytes = self._preroll_bytes
                self._preroll.clear()
                self._preroll_bytes = 0
                self._too_long = False
                self._turn = self._turns_seen + 1
            case ev.UserTurnText():
                self._turns_seen += 1
            case ev.UserStoppedSpeaking() if self._recording is not None:
                pcm = b"".join(self._recording)
                self.last = Utterance(pcm, self._sample_rate, self._turn, self._too_long)
                self._recording = None
                self._recorded_bytes = 0

    def clear(self) -> None:
        """The session ended: let every byte go."""
        self._preroll.clear()
        self._preroll_bytes = 0
        self._recording = None
        self._recorded_bytes = 0
        self.last = None


def history_before(messages: list, turn: int) -> list:
    """A copy of the conversation up to (not including) user turn ``turn`` (1-based).

    The other stack's LLM then sees what the live one saw when it answered;
    its own turn is added to this copy, never to the live call's context.
    """
    seen = 0
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            seen += 1
            if seen == turn:
                return copy.deepcopy(messages[:index])
    return copy.deepcopy(list(messages))


class ABRefused(Exception):
    """The run cannot start; the message is plain words for the page."""


@dataclass(frozen=True)
class HeadlessResult:
    """What the other stack did with the utterance: its events, and why it stopped early if so."""

    events: tuple[ev.Event, ...]
    error: str | None = None
    # Seconds of reply audio it produced (nobody heard them).
    reply_audio_secs: float = 0.0


class _DiscardingOutbox(SessionOutbox):
    """An outbox that keeps nothing: the reply's audio is only counted."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_secs = 0.0

    def put(self, item: object) -> None:
        if isinstance(item, tuple):
            rate, samples = item
            self.audio_secs += len(samples) / rate


def headless_config(
    live: SessionConfig, choices: dict[Stage, StageChoice], keys: ProviderKeys
) -> SessionConfig:
    """The live call's knobs with other providers: only the stack differs between the two turns.

    Refuses a stage that needs a key the session does not have, rather than
    quietly running it locally and comparing the wrong thing.
    """
    config = replace(
        live,
        keys=keys,
        stt=choices["stt"],
        llm=choices["llm"],
        tts=choices["tts"],
        dashboard=True,
        output_lead_secs=UNPACED_LEAD_SECS,
        idle_timeout_secs=AB_TIMEOUT_SECS,
    )
    if missing := config.keyless_stages():
        names = sorted({PROVIDERS[config.choices()[s].provider].label for s in missing})
        raise ABRefused(
            f"No API key for {' and '.join(names)} ({', '.join(s.upper() for s in missing)}): "
            "type one in Providers and settings, or pick another provider."
        )
    for stage, choice in config.choices().items():
        if reason := PROVIDERS[choice.provider].unavailable(stage):
            raise ABRefused(f"{PROVIDERS[choice.provider].label} {stage.upper()}: {reason}")
    return config


async def run_headless(
    config: SessionConfig,
    models: LocalModels,
    utterance: Utterance,
    history: list,
    *,
    timeout: float = AB_TIMEOUT_SECS,
    no_words_secs: float = NO_WORDS_SECS,
) -> HeadlessResult:
    """Feed ``utterance`` in real time to a generation built from ``config``; collect its events.

    Ends when the other stack's reply is complete, it reports an error, it
    heard no words, or ``timeout`` passes; its pipeline is then cancelled and
    released. Never raises for what the providers do: that is in ``error``.
    """
    events: list[ev.Event] = []
    progress = _Progress()

    def sink(event: ev.Event) -> None:
        events.append(event)
        progress.note(event)

    outbox = _DiscardingOutbox()
    error: str | None = None
    try:
        await asyncio.wait_for(
            _run(config, models, utterance, history, outbox, sink, progress, no_words_secs),
            timeout,
        )
    except TimeoutError:
        error = f"The other stack did not finish within {timeout:g} s."
    except (LocalStageUnavailable, ABRefused) as e:
        error = str(e)
    except Exception as e:
        log.warning("A/B run failed: %s", config.keys.redact(str(e)))
        error = f"The other stack failed: {config.keys.redact(str(e))}"
    if error is None:
        error = next((e.message for e in events if isinstance(e, ev.ErrorReported)), None)
    return HeadlessResult(tuple(events), error, outbox.audio_secs)


async def _run(
    config: SessionConfig,
    models: LocalModels,
    utterance: Utterance,
    history: list,
    outbox: SessionOutbox,
    sink: Callable[[ev.Event], None],
    progress: _Progress,
    no_words_secs: float,
) -> None:
    # Off this loop's thread, as the switcher does: ONNX sessions take ~70 ms to create.
    generation = await asyncio.to_thread(
        build_generation, config, models, outbox, sink, LLMContext(messages=history)
    )
    started = asyncio.Event()

    @generation.worker.event_handler("on_pipeline_started")
    async def _on_started(_worker, _frame):
        sink(ev.SessionStarted(time.time()))
        sink(ev.ProvidersChanged(time.time(), *config.labels()))
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(generation.worker)
    running = asyncio.create_task(runner.run(), name="voice-lab-ab-pipeline")
    try:
        await _first(started.wait(), running)
        if running.done():
            raise ABRefused("The other stack's pipeline stopped before it started.")
        await _feed(generation.transport.input(), utterance, progress, no_words_secs)
    finally:
        await runner.cancel(reason="A/B run over")
        await asyncio.gather(running, return_exceptions=True)


async def _first(awaitable: Awaitable, task: asyncio.Task) -> None:
    """Wait for ``awaitable`` unless ``task`` ends first."""
    waiter = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


class _Progress:
    """How far the other stack has got, from its events (times on their clock, ``time.time()``)."""

    def __init__(self) -> None:
        self.heard = False  # its STT heard words
        self.failed = False
        self.replied_at: float | None = None  # its reply is complete
        self.stt_measured = False  # its STT's time to first byte is in

    def note(self, event: ev.Event) -> None:
        match event:
            case ev.UserTurnText():
                self.heard = True
            case ev.ServiceTTFB(stage="stt"):
                self.stt_measured = True
            case ev.ErrorReported():
                self.failed = True
            case ev.BotTurnText():
                self.replied_at = event.t

    def done(self, now: float) -> bool:
        if self.failed:
            return True
        if self.replied_at is None:
            return False
        return self.stt_measured or now - self.replied_at > STT_TTFB_GRACE_SECS


async def _feed(
    transport_in, utterance: Utterance, progress: _Progress, no_words_secs: float
) -> None:
    """The utterance in 20 ms frames on a real-time clock, then silence until the turn is done."""
    rate = utterance.sample_rate
    step = int(rate * FRAME_SECS) * 2
    silence = bytes(step)
    start = time.monotonic()
    frames = 0
    for offset in range(0, len(utterance.pcm), step):
        if progress.failed:
            return
        chunk = utterance.pcm[offset : offset + step]
        await transport_in.push_pcm(chunk.ljust(step, b"\0"), rate)
        frames += 1
        await asyncio.sleep(max(0.0, start + frames * FRAME_SECS - time.monotonic()))
    spoken_until = time.monotonic()
    while not progress.done(time.time()):
        if not progress.heard and time.monotonic() - spoken_until > no_words_secs:
            raise ABRefused("The other stack heard no words in your last utterance.")
        await transport_in.push_pcm(silence, rate)
        frames += 1
        await asyncio.sleep(max(0.0, start + frames * FRAME_SECS - time.monotonic()))


async def run_apart(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` returns on a new event loop, on a thread of its own.

    The live calls' loop carries every session's 20 ms audio frames; the other
    stack's pipeline (its frames, its observers, its start and stop) stays off
    it. A thread of its own rather than the default executor, which the
    sessions need for their own model calls and pipeline builds.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[Outcome], None], value: Outcome) -> None:
        if not done.done():  # the waiting coroutine may have been cancelled
            outcome(value)

    def target() -> None:
        try:
            result = asyncio.run(make())
        except BaseException as e:  # handed to the waiting coroutine, not lost on this thread
            loop.call_soon_threadsafe(settle, done.set_exception, e)
        else:
            loop.call_soon_threadsafe(settle, done.set_result, result)

    threading.Thread(target=target, name="voice-lab-ab", daemon=True).start()
    return await done


async def wait_between_turns(session: LiveCall, limit: float) -> bool:
    """Wait (at most ``limit`` seconds) until the live call is between turns; False if it never is.

    The other stack starts only then, so that it does not compete for the CPU
    and the shared local models with the live reply being synthesised (a
    comparison is usually asked for while the bot is still answering).
    """
    deadline = time.monotonic() + limit
    while not session.finished.is_set():
        generation = session.generation
        if generation is None or generation.activity.idle:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(BETWEEN_TURNS_POLL_SECS)
    return False


async def replay_last_utterance(
    session: LiveCall,
    choices: dict[Stage, StageChoice],
    keys: ProviderKeys,
    models: LocalModels,
    timeout: float = AB_TIMEOUT_SECS,
) -> tuple[Utterance, HeadlessResult]:
    """The session's last utterance through ``choices``; raises ABRefused with the reason.

    Runs on the live call's event loop only to read the session; the other
    stack runs on a thread and loop of its own. One run at a time per call;
    the server's keys pay for it as they do for the call.
    """
    utterance = session.utterance.last
    if utterance is None:
        raise ABRefused("Say something first: there is no utterance to compare yet.")
    if utterance.too_long:
        raise ABRefused(
            f"Your last utterance ran over {MAX_UTTERANCE_SECS:.0f} s: "
            "the comparison takes shorter ones. Say something shorter and try again."
        )
    if session.comparing:
        raise ABRefused("A comparison is already running for this call: wait for it to finish.")
    config = headless_config(session.config, choices, keys)
    if session.key_budget.spent and (stages := config.server_key_stages()):
        raise ABRefused(
            f"Your time on this server's keys is used up ({', '.join(s.upper() for s in stages)}):"
            " type your own API key to compare with that provider."
        )
    session.comparing = True
    try:
        if not await wait_between_turns(session, BETWEEN_TURNS_WAIT_SECS):
            raise ABRefused("The call is still busy with a turn: try again once it is answered.")
        generation = session.generation
        history = history_before(generation.context.messages, utterance.turn) if generation else []
        started = time.monotonic()
        try:
            result = await run_apart(
                lambda: run_headless(config, models, utterance, history, timeout=timeout)
            )
        finally:
            if config.server_key_stages():
                session.key_budget.charge(time.monotonic() - started)
    finally:
        session.comparing = False
    return utterance, result
