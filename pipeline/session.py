"""One browser connection = one :class:`VoiceSession` = one pipecat pipeline.

fastrtc copies the handler per connection (``copy()``), calls ``start_up()``
once the connection is live, ``receive()`` for every incoming audio frame,
pulls ``emit()`` for outgoing audio and UI updates, and ``shutdown()`` when the
connection closes. The pipeline lives inside ``start_up()``; ``shutdown()``
cancels it and waits (bounded) until every task it started is gone.

Provider and knob changes arrive from the page through fastrtc's ``set_args``
and take effect between turns: the next pipeline *generation* is built with
the new settings and the same conversation context, started, and the old one
cancelled, while the WebRTC connection stays up. Audio arriving during the
hand-over is held and replayed into the new generation.

UI updates are coalesced: observers append events to a list, and a publisher
task folds them into the view state at most ``publish_interval`` apart, so a
burst of tokens costs one update rather than one per token. Each update
carries the previously published state too, so the renderer can skip what did
not change (charts are redrawn only when a metric arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
from fastrtc import AdditionalOutputs, AsyncStreamHandler, CloseStream
from fastrtc.utils import current_context
from pipecat.workers.runner import WorkerRunner

from pipeline import events as ev
from pipeline.builder import VoicePipeline, build_voice_pipeline
from pipeline.config import SessionConfig, server_key_budget_secs
from pipeline.providers.local.models import LocalModels, LocalStageUnavailable, shared_models
from pipeline.providers.registry import PROVIDERS
from pipeline.transport import AudioOutbox

log = logging.getLogger(__name__)

S = TypeVar("S")
SHUTDOWN_TIMEOUT_SECS = 2.0
# How long the page gets to send its settings when a connection starts.
SETTINGS_WAIT_SECS = 3.0
# A switch waits for the gap between turns to have lasted this long.
SWITCH_IDLE_SECS = 0.3
# Audio held while one generation hands over to the next (at 20 ms a frame).
HANDOVER_FRAMES = 150
EVENT_LOG_LIMIT = 5000
# How often the time on the server's keys is counted and shown.
SERVER_KEY_TICK_SECS = 1.0
DELAY_SAMPLES = 2000


def _weakly(owner, method: Callable) -> Callable:
    """``method`` bound to ``owner`` through a weak reference (a no-op once it is gone)."""
    ref = weakref.ref(owner)

    def call(*args):
        target = ref()
        if target is not None:
            return method(target, *args)
        return None

    return call


def _no_key_message(config: SessionConfig, stages: list[str]) -> str:
    names = sorted({PROVIDERS[config.choices()[stage].provider].label for stage in stages})
    return (
        f"No API key for {' and '.join(names)}: using the local models for "
        f"{', '.join(s.upper() for s in stages)} until you type one in."
    )


class SessionRecords:
    """The event logs of the most recent sessions, by WebRTC connection id, for export.

    Only the log is kept (not the pipeline), bounded to ``limit`` sessions. A
    connection id is random and known only to the browser that made it, so a
    visitor can only export their own session.
    """

    def __init__(self, limit: int = 64):
        self._limit = limit
        self._logs: OrderedDict[str, deque[ev.Event]] = OrderedDict()

    def add(self, connection_id: str, log_: deque[ev.Event]) -> None:
        self._logs[connection_id] = log_
        while len(self._logs) > self._limit:
            self._logs.popitem(last=False)

    def get(self, connection_id: str) -> list[ev.Event] | None:
        found = self._logs.get(connection_id)
        return None if found is None else list(found)


class VoiceSession(AsyncStreamHandler, Generic[S]):
    """The fastrtc <-> pipecat bridge for one connection.

    ``reduce`` and ``initial_state`` come from the UI layer: the session folds
    its events with them and emits the resulting state as ``AdditionalOutputs``.
    The pipeline package never imports the UI.
    """

    def __init__(
        self,
        *,
        reduce: Callable[[S, ev.Event], S],
        initial_state: Callable[[], S],
        config_factory: Callable[[], SessionConfig] = SessionConfig,
        settings_from_inputs: Callable[..., SessionConfig] | None = None,
        models: LocalModels | None = None,
        publish_interval: float = 0.1,
        records: SessionRecords | None = None,
    ):
        config = config_factory()
        super().__init__(
            expected_layout="mono",
            output_sample_rate=config.output_sample_rate,
            input_sample_rate=config.input_sample_rate,
        )
        self._reduce = reduce
        self._initial_state = initial_state
        self._config_factory = config_factory
        self._settings_from_inputs = settings_from_inputs
        self._models = models or shared_models()
        self._publish_interval = publish_interval
        self.records = records if records is not None else SessionRecords()

        self.config = config
        self.state: S = initial_state()
        self._published: S | None = None
        self.events: deque[ev.Event] = deque(maxlen=EVENT_LOG_LIMIT)
        self.outbox = AudioOutbox()
        # Weak: the outbox and the pipeline must not keep a closed session alive.
        self.outbox.clear_downstream = _weakly(self, VoiceSession._clear_fastrtc_queue)
        self.voice: VoicePipeline | None = None
        self.finished = asyncio.Event()
        # Seconds from each event's creation to its hand-off to fastrtc (benchmark).
        self.ui_delays: deque[float] = deque(maxlen=DELAY_SAMPLES)
        self._pending: list[ev.Event] = []
        self._dirty = asyncio.Event()
        self._closed = False
        self._runner: WorkerRunner | None = None
        self._publisher: asyncio.Task | None = None
        self._last_audio_at: float | None = None
        self._heard_audio = False
        self._shutdown_requested = False
        self._started = False
        # Set from the page's thread, applied on the event loop.
        self._requested: SessionConfig | None = None
        self._switch_requested = asyncio.Event()
        self._switcher: asyncio.Task | None = None
        self._next_voice: VoicePipeline | None = None
        self._handover: deque[tuple[int, np.ndarray]] | None = None
        self._handover_task: asyncio.Task | None = None
        self._startup_notice: str | None = None
        # Seconds this session may spend on the server's own API keys (0: unlimited).
        self._server_key_budget = server_key_budget_secs()
        self._server_key_used = 0.0
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def copy(self) -> VoiceSession[S]:
        return VoiceSession(
            reduce=self._reduce,
            initial_state=self._initial_state,
            config_factory=self._config_factory,
            settings_from_inputs=self._settings_from_inputs,
            models=self._models,
            publish_interval=self._publish_interval,
            records=self.records,
        )

    # -- events -> UI -------------------------------------------------------

    def report(self, event: ev.Event) -> None:
        """Called by observers: cheap and synchronous, never blocks the pipeline."""
        self.events.append(event)
        if self.config.dashboard:
            self._pending.append(event)
            self._dirty.set()

    def snapshot(self) -> S:
        """The state the page shows once pending events are published (tests, benchmark)."""
        self._publish_pending()
        return self.state

    def _publish_pending(self) -> None:
        pending, self._pending = self._pending, []
        self._dirty.clear()
        for event in pending:
            self.state = self._reduce(self.state, event)
        self.outbox.put(AdditionalOutputs(self._published, self.state))
        now = time.time()
        self.ui_delays.extend(now - event.t for event in pending)
        self._published = self.state

    async def _publish_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._publish_pending()
            await asyncio.sleep(self._publish_interval)

    # -- fastrtc handler interface -------------------------------------------

    async def start_up(self) -> None:
        self._started = True
        self._loop = asyncio.get_running_loop()
        connection = current_context.get()
        if connection is not None:
            self.records.add(connection.webrtc_id, self.events)
        if self.config.dashboard:
            self._publisher = asyncio.create_task(self._publish_loop(), name="voice-lab-publisher")
        watchdog = asyncio.create_task(self._watch_audio(), name="voice-lab-audio-watchdog")
        meter = asyncio.create_task(self._meter_server_keys(), name="voice-lab-server-keys")
        self._switcher = asyncio.create_task(self._switch_loop(), name="voice-lab-switcher")
        try:
            await self._receive_page_settings()
            # Built off the event loop: the per-session Silero and Smart Turn
            # ONNX sessions take ~70 ms to create, longer than the output's
            # jitter cushion, and every other session's audio runs on this loop.
            if missing := self.config.keyless_stages():
                # Picked before pressing Record, without a key: start on the
                # local models for those stages rather than not at all.
                self._startup_notice = _no_key_message(self.config, missing)
                self.config = self.config.with_local_fallback()
            voice = await asyncio.to_thread(self._build, self.config, None)
            if voice.config is not self.config:  # the page changed a setting meanwhile
                self._requested = self.config
                self._switch_requested.set()
            while voice is not None and not self._shutdown_requested:
                try:
                    await self._run_generation(voice)
                finally:
                    voice.release()
                voice, self._next_voice = self._next_voice, None
        except LocalStageUnavailable as e:
            log.warning("session refused: %s", e)
            self.report(ev.ErrorReported(time.time(), str(e), True))
        except Exception as e:
            log.exception("session failed")
            self.report(ev.ErrorReported(time.time(), f"The voice pipeline failed: {e}", True))
        finally:
            watchdog.cancel()
            meter.cancel()
            self._switcher.cancel()
            await self._finish("session ended")

    def _build(self, config: SessionConfig, voice: VoicePipeline | None) -> VoicePipeline:
        context = voice.context if voice is not None else None
        # The pipeline reports through a weak reference: its processors form
        # cycles that only the cyclic GC frees, and they must not hold the session.
        sink = _weakly(self, lambda session, event: session.report(event))
        return build_voice_pipeline(config, self._models, self.outbox, sink, context)

    async def _run_generation(self, voice: VoicePipeline) -> None:
        """Run one pipeline generation until it ends (switch, disconnect, idle timeout)."""
        first = self.voice is None
        self.voice = voice
        self.config = voice.config

        session = weakref.ref(self)  # the pipeline must not hold the session (see _build)

        @voice.worker.event_handler("on_pipeline_started")
        async def _on_started(_worker, _frame):
            if (self_ := session()) is not None:
                self_._generation_started(voice, first)

        self._runner = WorkerRunner(handle_sigint=False)
        await self._runner.add_workers(voice.worker)
        # ``run()`` clears a cancel issued before it starts: check ourselves.
        if not self._shutdown_requested:
            await self._runner.run()

    def _generation_started(self, voice: VoicePipeline, first: bool) -> None:
        if first:
            self.report(ev.SessionStarted(time.time()))
        self.report(ev.ProvidersChanged(time.time(), *self._labels(voice.config)))
        if self._startup_notice:
            # After SessionStarted, which clears the page's error line.
            self.report(ev.ErrorReported(time.time(), self._startup_notice))
            self._startup_notice = None
        self._replay_handover(voice)

    @staticmethod
    def _labels(config: SessionConfig) -> tuple[str, str, str]:
        return (config.stt.label, config.llm.label, config.tts.label)

    # -- settings from the page ----------------------------------------------

    def set_args(self, args: list) -> None:
        """fastrtc hands over the page's inputs (providers, keys, knobs) on every change.

        Called from Gradio's worker thread. Deliberately not the base class's
        version, which logs the arguments, and so the visitor's keys, at debug level.
        """
        if self._settings_from_inputs is None or len(args) < 2:
            return
        try:
            config = self._settings_from_inputs(*args[1:])
        except ValueError as e:
            self._call_soon(self.report, ev.ErrorReported(time.time(), str(e)))
            return
        self._call_soon(self.request_config, config)
        self._call_soon(self.args_set.set)

    def _call_soon(self, fn, *args) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)

    def request_config(self, config: SessionConfig) -> None:
        """Use ``config`` from the next turn on (before the pipeline exists: from the start)."""
        if self._server_keys_spent and (stages := config.server_key_stages()):
            self.report(ev.ErrorReported(time.time(), self._server_keys_message(config, stages)))
            config = config.with_local_for(stages)
        if self.voice is None and self._next_voice is None:
            self.config = config
            return
        self._requested = config
        self._switch_requested.set()

    # -- the server's own keys -------------------------------------------------

    @property
    def _server_keys_spent(self) -> bool:
        return 0 < self._server_key_budget <= self._server_key_used

    def _server_keys_message(self, config: SessionConfig, stages: list[str]) -> str:
        names = sorted({PROVIDERS[config.choices()[stage].provider].label for stage in stages})
        return (
            f"Your {self._server_key_budget:.0f} s on this server's {' and '.join(names)} "
            f"key{'s' if len(names) > 1 else ''} are used up: "
            f"{', '.join(s.upper() for s in stages)} now run on the local models. "
            "Type your own API key to keep using them."
        )

    async def _meter_server_keys(self) -> None:
        """Count the time spent on the server's keys; past the budget, go local for those stages.

        On a public Space the owner's keys serve every visitor who types none:
        without a limit one visitor could talk on the owner's account for ever.
        """
        if self._server_key_budget <= 0:
            return
        last = time.monotonic()
        while not self._server_keys_spent:
            await asyncio.sleep(SERVER_KEY_TICK_SECS)
            now = time.monotonic()
            elapsed, last = now - last, now
            if self.voice is None or not (stages := self.config.server_key_stages()):
                continue
            self._server_key_used += elapsed
            remaining = max(0.0, self._server_key_budget - self._server_key_used)
            self.report(ev.ServerKeyTime(time.time(), remaining, self._server_key_budget))
            if self._server_keys_spent:
                self.report(
                    ev.ErrorReported(time.time(), self._server_keys_message(self.config, stages))
                )
                self.request_config(self.config.with_local_for(stages))

    async def _receive_page_settings(self) -> None:
        """Ask the page for its current settings (fastrtc's data channel) before building."""
        if self.channel is None or self.args_set.is_set():
            return
        try:
            await asyncio.wait_for(self.wait_for_args(), SETTINGS_WAIT_SECS)
        except TimeoutError:
            log.warning("the page sent no settings: starting with the defaults")

    async def _switch_loop(self) -> None:
        while True:
            await self._switch_requested.wait()
            await self._wait_until_between_turns()
            self._switch_requested.clear()
            config, self._requested = self._requested, None
            if config is None or self.voice is None or self._shutdown_requested:
                continue
            await self._switch_to(config)

    async def _wait_until_between_turns(self) -> None:
        idle_since: float | None = None
        while True:
            voice = self.voice
            handing_over = self._next_voice is not None or self._handover is not None
            if voice is not None and voice.activity.idle and not handing_over:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= SWITCH_IDLE_SECS:
                    return
            else:
                idle_since = None
            await asyncio.sleep(0.05)

    async def _switch_to(self, config: SessionConfig) -> None:
        old = self.voice
        assert old is not None
        try:
            new = await asyncio.to_thread(self._build, config, old)
        except Exception as e:
            log.warning("could not switch providers: %s", config.keys.redact(str(e)))
            self.report(ev.ErrorReported(time.time(), config.keys.redact(str(e))))
            return
        if self._shutdown_requested:
            return
        log.info("switching to %s", " / ".join(self._labels(config)))
        self._handover = deque(maxlen=HANDOVER_FRAMES)
        self._next_voice = new
        if self._runner is not None:
            await self._runner.cancel(reason="switching providers")

    def _replay_handover(self, voice: VoicePipeline) -> None:
        if self._handover is not None:
            self._handover_task = asyncio.create_task(
                self._drain_handover(voice), name="voice-lab-handover"
            )

    async def _drain_handover(self, voice: VoicePipeline) -> None:
        """Feed the held audio to the new generation, in order, then let frames through."""
        held = self._handover
        while held:
            sample_rate, pcm = held.popleft()
            await voice.transport.input().push_pcm(pcm.tobytes(), sample_rate)
        # No await between the last check and this: no frame can slip past.
        self._handover = None

    # -- audio in and out, teardown ------------------------------------------

    @property
    def heard_audio(self) -> bool:
        """The browser has sent audio: a live connection, not one holding a slot idly."""
        return self._heard_audio

    async def receive(self, frame: tuple[int, np.ndarray]) -> None:
        self._heard_audio = True
        if self.voice is None or self._closed:
            return
        self._last_audio_at = time.monotonic()
        sample_rate, samples = frame
        pcm = np.ascontiguousarray(samples.reshape(-1), dtype=np.int16)
        if self._handover is not None:
            self._handover.append((sample_rate, pcm))
            return
        await self.voice.transport.input().push_pcm(pcm.tobytes(), sample_rate)

    async def emit(self):
        if self.finished.is_set() and self.outbox.empty():
            # fastrtc keeps polling until its connection notices the close;
            # don't let it spin.
            await asyncio.sleep(0.1)
            return None
        return await self.outbox.get()

    async def shutdown(self) -> None:
        """The browser left (tab closed, stop pressed): tear everything down."""
        log.info("client disconnected: closing its session")
        self._shutdown_requested = True
        if not self._started:
            return  # start_up never ran: nothing to wait for
        if self._runner is not None and not self.finished.is_set():
            await self._runner.cancel(reason="client disconnected")
        try:
            await asyncio.wait_for(self.finished.wait(), SHUTDOWN_TIMEOUT_SECS)
        except TimeoutError:
            log.warning("session did not finish within %.1fs", SHUTDOWN_TIMEOUT_SECS)
        await self._stop_publisher()
        if self.finished.is_set():
            self._drop_references()

    def _drop_references(self) -> None:
        """Break the cycles that would keep this closed session alive until the cyclic GC.

        Without this a closed connection's session, pipeline and peer connection
        stay in memory until Python's cyclic garbage collector next runs, which on
        a long-lived server can be many connections later.
        """
        self.voice = self._next_voice = None
        self._runner = self._switcher = self._handover_task = None
        self._clear_queue = None
        # fastrtc wraps these bound methods in error handlers stored on the
        # instance (``handler.emit = webrtc_error_handler(handler.emit)``): a cycle.
        for name in ("emit", "receive", "start_up", "shutdown"):
            self.__dict__.pop(name, None)

    # -- internals -----------------------------------------------------------

    async def _watch_audio(self) -> None:
        """End the session once a browser that was sending audio stops.

        A closed tab sends no goodbye that aiortc acts on: the connection
        would only fail after ~30 s of missed ICE consent checks, with the
        pipeline talking to nobody all the while. A live browser sends a
        frame every 20 ms even when the user is silent.
        """
        limit = self.config.audio_gone_secs
        while True:
            await asyncio.sleep(0.1)
            last = self._last_audio_at
            if last is not None and time.monotonic() - last > limit:
                log.info("no audio from the browser for %.1fs: closing its session", limit)
                self._shutdown_requested = True
                if self._runner is not None:
                    await self._runner.cancel(reason="browser gone")
                return

    def _clear_fastrtc_queue(self) -> None:
        if self._clear_queue is not None:
            self._clear_queue()

    async def _finish(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.report(ev.SessionEnded(time.time(), reason))
        self._publish_pending()
        await self._stop_publisher()
        self.outbox.put(CloseStream(reason))
        self.finished.set()
        log.info("session finished: %s", reason)

    async def _stop_publisher(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
            self._publisher = None
